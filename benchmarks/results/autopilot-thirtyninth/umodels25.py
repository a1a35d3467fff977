"""Gates of two halves over features (thirty-ninth session), as digits 8x8 classifiers (inputs (1, 8, 8)): a fused
SwiGLU MLP over tokens (``a, b = fc1(x).chunk(2, -1)``), a GEGLU written with ``F.gelu``, the same gate over a
(batch, features) MLP, and a transformer block whose q, k and v come from one Linear chunked in three."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "autopilot-thirtyseventh"))
from umodels11 import _factory  # noqa: E402


class _Tokens(nn.Module):
    """The 8x8 image as 8 tokens of 8 pixels (its rows), embedded to ``d``; mean over tokens; a classifier."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.embed, self.norm, self.fc = nn.Linear(8, d), nn.LayerNorm(d), nn.Linear(d, 10)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x.flatten(1, 2))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(h).mean(1))


class SwiGlu(_Tokens):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(32, 128), nn.Linear(64, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tokens(x)
        a, b = self.fc1(h).chunk(2, dim=-1)
        return self.head(h + self.fc2(F.silu(a) * b))


class GeGlu(_Tokens):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(32, 128), nn.Linear(64, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tokens(x)
        a, gate = self.fc1(h).chunk(2, dim=-1)
        return self.head(h + self.fc2(a * F.gelu(gate)))


class FlatGlu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 128), nn.Linear(64, 64), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.fc1(x.flatten(1)).chunk(2, dim=1)
        return self.fc3(F.relu(self.fc2(F.silu(a) * b)))


class FusedQkv(_Tokens):
    def __init__(self) -> None:
        super().__init__()
        self.heads = 4
        self.qkv, self.proj = nn.Linear(32, 96), nn.Linear(32, 32)
        self.fc1, self.fc2 = nn.Linear(32, 64), nn.Linear(64, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tokens(x)
        n, t, _ = h.shape
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        q, k, v = (z.reshape(n, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, -1)
        h = h + self.proj(att)
        return self.head(h + self.fc2(F.gelu(self.fc1(h))))


MODELS = {"swiglu": SwiGlu, "geglu": GeGlu, "flat_glu": FlatGlu, "fused_qkv": FusedQkv}

for _name, _cls in MODELS.items():
    globals()[_name] = _factory(_cls)

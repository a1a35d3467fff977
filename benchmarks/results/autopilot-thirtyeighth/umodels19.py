"""einops beyond rearrange (thirty-eighth session): EinMix layers, pack/unpack, an ellipsis pattern, as digits 8x8
classifiers (inputs (1, 8, 8))."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import pack, rearrange, unpack
from einops.layers.torch import EinMix
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "autopilot-thirtyseventh"))
from umodels11 import _factory  # noqa: E402


class EinMixer(nn.Module):
    """MLP-Mixer's token and channel mixing as einops EinMix layers (weights held by EinMix, not nn.Linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = EinMix("b c (h p1) (w p2) -> b (h w) d", weight_shape="c p1 p2 d", bias_shape="d", c=1, p1=2,
                            p2=2, d=32)
        self.tokens = EinMix("b t d -> b u d", weight_shape="t u", bias_shape="u", t=16, u=16)
        self.channels = nn.Linear(32, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = F.gelu(self.embed(x))
        h = h + F.gelu(self.tokens(h))
        return self.fc(F.gelu(self.channels(h)).mean(1))


class Packed(nn.Module):
    """A class token packed beside the patch tokens with einops.pack, unpacked after an MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.mlp, self.fc = nn.Linear(4, 32), nn.Linear(32, 32), nn.Linear(32, 10)
        self.cls = nn.Parameter(torch.zeros(1, 32))

    def forward(self, x):
        t = self.embed(rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=2, p2=2))
        h, shapes = pack([self.cls.expand(t.shape[0], -1), t], "b * d")
        h = F.gelu(self.mlp(h))
        cls, _ = unpack(h, shapes, "b * d")
        return self.fc(cls)


class EllipsisFlatten(nn.Module):
    """Convolutions flattened for the head by an einops pattern with an ellipsis."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(256, 10)

    def forward(self, x):
        return self.fc(rearrange(F.relu(self.c2(F.relu(self.c1(x)))), "b c ... -> b (c ...)"))


MODELS = {"einmix": EinMixer, "packed": Packed, "ellipsis": EllipsisFlatten}

for _name, _cls in MODELS.items():
    globals()[_name] = _factory(_cls)

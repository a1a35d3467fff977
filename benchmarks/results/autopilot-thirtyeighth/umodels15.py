"""Idioms no sweep had tried (thirty-eighth session): einops in the forward and as layers, as digits 8x8
classifiers (inputs (1, 8, 8))."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from einops.layers.torch import Rearrange, Reduce
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "autopilot-thirtyseventh"))
from umodels11 import _factory  # noqa: E402


class EinPatches(nn.Module):
    """A ViT-style patch embedding by an einops Rearrange layer, an MLP over each patch, the tokens flattened by
    einops.rearrange for the head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=2, p2=2)
        self.embed, self.mlp, self.fc = nn.Linear(4, 32), nn.Linear(32, 16), nn.Linear(256, 10)

    def forward(self, x):
        h = F.gelu(self.embed(self.patch(x)))
        return self.fc(rearrange(F.gelu(self.mlp(h)), "b n d -> b (n d)"))


class EinTokens(nn.Module):
    """Convolutions' map turned into tokens by einops.rearrange in the forward, a Linear over channels, the tokens
    pooled 2x2 by einops.reduce and flattened for the head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.lin, self.fc = nn.Linear(32, 32), nn.Linear(16 * 32, 10)

    def forward(self, x):
        t = rearrange(F.relu(self.c2(F.relu(self.c1(x)))), "b c h w -> b (h w) c")
        t = reduce(F.relu(self.lin(t)), "b (h p1 w p2) c -> b (h w c)", "max", h=4, p1=2, w=4, p2=2)
        return self.fc(t)


class EinMixer(nn.Module):
    """An MLP-Mixer block written with einops: token mixing on the transposed tokens, channel mixing after."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Sequential(Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=2, p2=2), nn.Linear(4, 32))
        self.tok1, self.tok2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.ch1, self.ch2 = nn.Linear(32, 64), nn.Linear(64, 32)
        self.norm1, self.norm2 = nn.LayerNorm(32), nn.LayerNorm(32)
        self.head = nn.Sequential(Reduce("b n c -> b c", "mean"), nn.Linear(32, 10))

    def forward(self, x):
        h = self.embed(x)
        t = rearrange(self.norm1(h), "b n c -> b c n")
        h = h + rearrange(self.tok2(F.gelu(self.tok1(t))), "b c n -> b n c")
        h = h + self.ch2(F.gelu(self.ch1(self.norm2(h))))
        return self.head(h)


class EinCls(nn.Module):
    """A class token made by einops.repeat, prepended to patch tokens, one attention layer, the class token read."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Sequential(Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=2, p2=2), nn.Linear(4, 32))
        self.cls, self.pos = nn.Parameter(torch.zeros(1, 1, 32)), nn.Parameter(torch.randn(1, 16, 32) * 0.02)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.mlp1, self.mlp2, self.fc = nn.Linear(32, 64), nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(self, x):
        h = self.embed(x) + self.pos
        h = torch.cat([repeat(self.cls, "1 1 d -> b 1 d", b=h.shape[0]), h], dim=1)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        h = h + self.mlp2(F.gelu(self.mlp1(h)))
        return self.fc(h[:, 0])


class EinHeads(nn.Module):
    """Multi-head attention written by hand with einops: qkv from one Linear split into heads by rearrange."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Sequential(Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=2, p2=2), nn.Linear(4, 32))
        self.qkv, self.proj = nn.Linear(32, 96), nn.Linear(32, 32)
        self.pos = nn.Parameter(torch.randn(1, 16, 32) * 0.02)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = self.embed(x) + self.pos
        q, k, v = rearrange(self.qkv(h), "b n (three hd d) -> three b hd n d", three=3, hd=4)
        a = torch.softmax(torch.einsum("bhid,bhjd->bhij", q, k) * 8 ** -0.5, dim=-1)
        o = rearrange(torch.einsum("bhij,bhjd->bhid", a, v), "b hd n d -> b n (hd d)")
        h = h + self.proj(o)
        return self.fc(h.mean(1))


class EinConvPool(nn.Module):
    """Convolutions pooled by an einops Reduce layer with a 2x2 max pattern, then Reduce to a vector."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.pool = Reduce("b c (h 2) (w 2) -> b c h w", "max")
        self.gap = Reduce("b c h w -> b c", "mean")
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.gap(F.relu(self.c2(self.pool(F.relu(self.c1(x)))))))


class EinConvBn(nn.Module):
    """Convolution, BatchNorm, ReLU twice, pooled by einops.reduce in the forward and flattened by rearrange."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.c2, self.b2 = nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32 * 4, 10)

    def forward(self, x):
        h = reduce(F.relu(self.b1(self.c1(x))), "b c (h 2) (w 2) -> b c h w", "max")
        h = reduce(F.relu(self.b2(self.c2(h))), "b c (h 2) (w 2) -> b c h w", "mean")
        return self.fc(rearrange(h, "b c h w -> b (c h w)"))


MODELS = {"ein_patches": EinPatches, "ein_tokens": EinTokens, "ein_mixer": EinMixer, "ein_cls": EinCls,
          "ein_heads": EinHeads, "ein_conv_pool": EinConvPool,
          "ein_conv_bn": EinConvBn}

for _name, _cls in MODELS.items():
    globals()[_name] = _factory(_cls)

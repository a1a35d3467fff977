"""Idioms no sweep had tried (thirty-eighth session): attention over channels and positions written by hand, as
digits 8x8 classifiers (inputs (1, 8, 8))."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "autopilot-thirtyseventh"))
from umodels11 import _factory  # noqa: E402


class _Base(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def head(self, h):
        return self.fc(F.relu(self.c2(h)).mean((2, 3)))


class Cbam(_Base):
    """CBAM: channel attention from average- and max-pooled descriptors through a shared MLP, then spatial attention
    from the channel mean and max through a 7x7 convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(32, 8, 1), nn.ReLU(), nn.Conv2d(8, 32, 1))
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x):
        h = F.relu(self.c1(x))
        h = h * torch.sigmoid(self.mlp(h.mean((2, 3), keepdim=True)) + self.mlp(h.amax((2, 3), keepdim=True)))
        s = torch.cat([h.mean(1, keepdim=True), h.amax(1, keepdim=True)], dim=1)
        return self.head(h * torch.sigmoid(self.spatial(s)))


class CoordAtt(_Base):
    """Coordinate attention: pooled along each axis, concatenated, a shared 1x1 convolution, split, one gate each."""

    def __init__(self) -> None:
        super().__init__()
        self.shared, self.gh, self.gw = nn.Conv2d(32, 8, 1), nn.Conv2d(8, 32, 1), nn.Conv2d(8, 32, 1)

    def forward(self, x):
        h = F.relu(self.c1(x))
        n, c, H, W = h.shape
        y = torch.cat([h.mean(3, keepdim=True), h.mean(2, keepdim=True).permute(0, 1, 3, 2)], dim=2)
        y = F.relu(self.shared(y))
        yh, yw = torch.split(y, [H, W], dim=2)
        return self.head(h * torch.sigmoid(self.gh(yh)) * torch.sigmoid(self.gw(yw.permute(0, 1, 3, 2))))


class Eca(_Base):
    """ECA: a 1-d convolution over the channel descriptor (channels as a sequence), a sigmoid gate."""

    def __init__(self) -> None:
        super().__init__()
        self.eca = nn.Conv1d(1, 1, 3, padding=1, bias=False)

    def forward(self, x):
        h = F.relu(self.c1(x))
        y = self.eca(h.mean((2, 3)).unsqueeze(1)).squeeze(1)
        return self.head(h * torch.sigmoid(y)[:, :, None, None])


class ChannelTokens(_Base):
    """Channels as tokens: a convolution's map flattened to (N, C, HW) and passed through multi-head attention."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(64, 4, batch_first=True)

    def forward(self, x):
        h = F.relu(self.c1(x))
        t = h.flatten(2)
        return self.head(h + self.attn(t, t, t, need_weights=False)[0].view_as(h))


class NonLocal(_Base):
    """A non-local block: theta, phi, g 1x1 convolutions, attention over pixels by bmm, an output 1x1 convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.theta, self.phi, self.g = nn.Conv2d(32, 16, 1), nn.Conv2d(32, 16, 1), nn.Conv2d(32, 16, 1)
        self.out = nn.Conv2d(16, 32, 1)

    def forward(self, x):
        h = F.relu(self.c1(x))
        n, c, H, W = h.shape
        q = self.theta(h).flatten(2).transpose(1, 2)
        k = self.phi(h).flatten(2)
        v = self.g(h).flatten(2).transpose(1, 2)
        a = torch.softmax(torch.bmm(q, k), dim=-1)
        y = torch.bmm(a, v).transpose(1, 2).reshape(n, 16, H, W)
        return self.head(h + self.out(y))


class FlipTta(_Base):
    """Test-time augmentation inside the forward: the batch and its mirror image concatenated along the batch,
    the two halves' logits averaged."""

    def forward(self, x):
        both = torch.cat([x, x.flip(3)], dim=0)
        out = self.head(F.relu(self.c1(both)))
        return out.view(2, x.shape[0], -1).mean(0)


class UnevenSplit(_Base):
    """A convolution's channels split unevenly (torch.split with sizes): 24 through a second convolution, 8 kept."""

    def __init__(self) -> None:
        super().__init__()
        self.c2 = nn.Conv2d(24, 24, 3, padding=1)

    def forward(self, x):
        a, b = torch.split(F.relu(self.c1(x)), [24, 8], dim=1)
        return self.fc(torch.cat([F.relu(self.c2(a)), b], dim=1).mean((2, 3)))


MODELS = {"cbam": Cbam, "coord_att": CoordAtt, "eca": Eca, "channel_tokens": ChannelTokens, "non_local": NonLocal,
          "flip_tta": FlipTta, "uneven_split": UnevenSplit}

for _name, _cls in MODELS.items():
    globals()[_name] = _factory(_cls)

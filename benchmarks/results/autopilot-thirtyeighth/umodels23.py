"""Segmentation heads written by hand (thirty-eighth session), as digits 8x8 classifiers (inputs (1, 8, 8)): an FPN,
PSPNet's pyramid pooling, DeepLab's ASPP."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "autopilot-thirtyseventh"))
from umodels11 import _factory  # noqa: E402


class Fpn(nn.Module):
    """Two stages and an FPN: lateral 1x1 convolutions, the coarse map upsampled to the fine one's size and added, a
    3x3 smoothing convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.s1, self.s2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.l1, self.l2 = nn.Conv2d(16, 24, 1), nn.Conv2d(32, 24, 1)
        self.smooth, self.fc = nn.Conv2d(24, 24, 3, padding=1), nn.Linear(24, 10)

    def forward(self, x):
        c1 = F.relu(self.s1(x))
        c2 = F.relu(self.s2(c1))
        p2 = self.l2(c2)
        p1 = self.l1(c1) + F.interpolate(p2, size=c1.shape[-2:], mode="nearest")
        return self.fc(F.relu(self.smooth(p1)).mean((2, 3)))


class Psp(nn.Module):
    """PSPNet's pyramid pooling: average pools to 1, 2 and 4 cells, a 1x1 convolution each, bilinear upsampling back,
    concatenated with the features, a 3x3 fusion convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 32, 3, padding=1)
        self.branches = nn.ModuleList(nn.Conv2d(32, 8, 1) for _ in range(3))
        self.fuse, self.fc = nn.Conv2d(32 + 24, 32, 3, padding=1), nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.c1(x))
        size = h.shape[-2:]
        pooled = [F.interpolate(F.relu(b(F.adaptive_avg_pool2d(h, s))), size=size, mode="bilinear", align_corners=False)
                  for b, s in zip(self.branches, (1, 2, 4))]
        return self.fc(F.relu(self.fuse(torch.cat([h, *pooled], 1))).mean((2, 3)))


class Aspp(nn.Module):
    """DeepLab's ASPP: a 1x1 branch, two dilated 3x3 branches, an image-pooling branch broadcast back to the map,
    concatenated, a 1x1 projection."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 32, 3, padding=1)
        self.b0 = nn.Conv2d(32, 16, 1)
        self.b1, self.b2 = nn.Conv2d(32, 16, 3, padding=2, dilation=2), nn.Conv2d(32, 16, 3, padding=3, dilation=3)
        self.pool = nn.Conv2d(32, 16, 1)
        self.project, self.fc = nn.Conv2d(64, 32, 1), nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.c1(x))
        g = F.relu(self.pool(h.mean((2, 3), keepdim=True))).expand(-1, -1, *h.shape[-2:])
        y = torch.cat([F.relu(self.b0(h)), F.relu(self.b1(h)), F.relu(self.b2(h)), g], 1)
        return self.fc(F.relu(self.project(y)).mean((2, 3)))


MODELS = {"fpn": Fpn, "psp": Psp, "aspp": Aspp}

for _name, _cls in MODELS.items():
    globals()[_name] = _factory(_cls)

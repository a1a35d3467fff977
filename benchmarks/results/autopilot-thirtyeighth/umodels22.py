"""Efficient-network blocks written by hand (thirty-eighth session), as digits 8x8 classifiers (inputs (1, 8, 8)):
FasterNet's partial convolution, YOLOv8's C2f, a Ghost module."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "autopilot-thirtyseventh"))
from umodels11 import _factory  # noqa: E402


class FasterNet(nn.Module):
    """FasterNet blocks: a 3x3 convolution on the first quarter of the channels (torch.split with sizes), the rest
    passed on, concatenated, then a 1x1 MLP with a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 32, 3, padding=1)
        self.pconv = nn.Conv2d(8, 8, 3, padding=1)
        self.mlp1, self.mlp2 = nn.Conv2d(32, 64, 1), nn.Conv2d(64, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.stem(x))
        a, b = torch.split(h, [8, 24], dim=1)
        y = torch.cat([self.pconv(a), b], 1)
        h = h + self.mlp2(F.relu(self.mlp1(y)))
        return self.fc(h.mean((2, 3)))


class C2f(nn.Module):
    """YOLOv8's C2f: cv1's output chunked in two halves, bottlenecks on the second, every piece concatenated into cv2."""

    def __init__(self) -> None:
        super().__init__()
        self.cv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.m1, self.m2 = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.cv2 = nn.Conv2d(48, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        y = list(F.silu(self.cv1(x)).chunk(2, 1))
        y.append(y[-1] + F.silu(self.m2(F.silu(self.m1(y[-1])))))
        return self.fc(F.silu(self.cv2(torch.cat(y, 1))).mean((2, 3)))


class Ghost(nn.Module):
    """A Ghost module: a primary 1x1 convolution, a cheap depthwise 3x3 on its output, both concatenated and sliced to
    the width wanted."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.primary = nn.Conv2d(16, 16, 1)
        self.cheap = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        h = F.relu(self.stem(x))
        p = F.relu(self.primary(h))
        g = torch.cat([p, F.relu(self.cheap(p))], 1)[:, :24]
        return self.fc(g.mean((2, 3)))


MODELS = {"fasternet": FasterNet, "c2f": C2f, "ghost": Ghost}

for _name, _cls in MODELS.items():
    globals()[_name] = _factory(_cls)

"""PointNet (thirty-ninth session), as a digits 8x8 classifier (inputs (1, 8, 8)): the 64 pixels as points (x, y,
grey level), an input transform (a T-Net's 3x3 matrix, ``torch.bmm`` with the points), shared Conv1d MLPs over the
points, a feature transform (64x64) with the same, max over the points, a classifier."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "autopilot-thirtyseventh"))
from umodels11 import _factory  # noqa: E402


class TNet(nn.Module):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.c1, self.c2 = nn.Conv1d(k, 32, 1), nn.Conv1d(32, 64, 1)
        self.f1, self.f2 = nn.Linear(64, 32), nn.Linear(32, k * k)
        self.register_buffer("eye", torch.eye(k).flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.c2(F.relu(self.c1(x)))).amax(2)
        return (self.f2(F.relu(self.f1(h))) + self.eye).view(-1, self.k, self.k)


class PointNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stn, self.fstn = TNet(3), TNet(16)
        self.c1, self.c2, self.c3 = nn.Conv1d(3, 16, 1), nn.Conv1d(16, 32, 1), nn.Conv1d(32, 64, 1)
        self.fc1, self.fc2 = nn.Linear(64, 32), nn.Linear(32, 10)
        ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
        self.register_buffer("coords", torch.stack([xs.flatten(), ys.flatten()]) / 7)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        n = img.shape[0]
        pts = torch.cat([self.coords.expand(n, -1, -1), img.flatten(2)], 1)  # (n, 3, 64)
        pts = torch.bmm(pts.transpose(2, 1), self.stn(pts)).transpose(2, 1)
        h = F.relu(self.c1(pts))
        h = torch.bmm(h.transpose(2, 1), self.fstn(h)).transpose(2, 1)
        h = F.relu(self.c3(F.relu(self.c2(h)))).amax(2)
        return self.fc2(F.relu(self.fc1(h)))


MODELS = {"pointnet": PointNet}

for _name, _cls in MODELS.items():
    globals()[_name] = _factory(_cls)

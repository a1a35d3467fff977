"""Idioms no sweep had tried (thirty-fifth session), as digits 8x8 classifiers (inputs (1, 8, 8))."""
import torch
import torch.nn.functional as F
from torch import nn


def _stem() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())


class CosineHead(nn.Module):
    """A cosine classifier: normalised features against normalised class weights held as a raw Parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.weight = _stem(), nn.Parameter(torch.randn(10, 32))

    def forward(self, x):
        h = F.normalize(self.body(x).mean((2, 3)), dim=1)
        return 16 * F.linear(h, F.normalize(self.weight, dim=1))


class Cbam(nn.Module):
    """CBAM's spatial attention: the mean and max over the channels, a 7x7 convolution, a sigmoid, a product."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.conv = _stem(), nn.Conv2d(32, 32, 3, padding=1)
        self.att, self.fc = nn.Conv2d(2, 1, 7, padding=3), nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.conv(self.body(x)))
        s = torch.cat([h.mean(1, keepdim=True), h.amax(1, keepdim=True)], 1)
        return self.fc((h * torch.sigmoid(self.att(s))).mean((2, 3)))


class WhereGate(nn.Module):
    """torch.where selects one branch's value where another branch is positive."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _stem()
        self.a, self.b = nn.Conv2d(32, 24, 1), nn.Conv2d(32, 24, 1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        h = self.body(x)
        a, b = self.a(h), self.b(h)
        return self.fc(torch.where(b > 0, a, torch.zeros_like(a)).mean((2, 3)))


class ChannelsLastMlp(nn.Module):
    """A CNN whose pointwise block is two Linears over the channels of a permuted map, added back."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.up, self.down = _stem(), nn.Linear(32, 64), nn.Linear(64, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = self.body(x)
        t = self.down(F.gelu(self.up(h.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)
        return self.fc((h + t).mean((2, 3)))

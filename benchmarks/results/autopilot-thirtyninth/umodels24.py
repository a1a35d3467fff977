"""Cross-stage blocks whose channels a chunk splits in equal pieces (thirty-ninth session), as digits 8x8
classifiers (inputs (1, 8, 8)): a CSP block, YOLOv8's C2f with BatchNorms and two bottlenecks, a gate of two halves
split by a width read from the input, and a chunk into three."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "autopilot-thirtyseventh"))
from umodels11 import _factory  # noqa: E402


class ConvBN(nn.Sequential):
    """Convolution, BatchNorm, SiLU: YOLO's ``Conv``."""

    def __init__(self, c_in: int, c_out: int, k: int = 1) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


class CSPBlock(nn.Module):
    """CSPNet: cv1's output chunked in two halves, a bottleneck on the first, both concatenated into cv2."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1, self.m, self.cv2 = ConvBN(c, c), nn.Sequential(ConvBN(c // 2, c // 2, 3), ConvBN(c // 2, c // 2, 3)), ConvBN(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).chunk(2, 1)
        return self.cv2(torch.cat([self.m(a), b], 1))


class CSP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.b1 = ConvBN(1, 32, 3), CSPBlock(32)
        self.down, self.b2 = ConvBN(32, 64, 3), CSPBlock(64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b1(self.stem(x))
        h = self.b2(self.down(F.max_pool2d(h, 2)))
        return self.fc(h.mean((2, 3)))


class Bottleneck(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1, self.cv2 = ConvBN(c, c, 3), ConvBN(c, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class C2fBlock(nn.Module):
    """YOLOv8's C2f with n bottlenecks: ``y = list(cv1(x).chunk(2, 1)); y.extend(m(y[-1]) for m in self.m)``."""

    def __init__(self, c_in: int, c_out: int, n: int = 2) -> None:
        super().__init__()
        self.c = c_out // 2
        self.cv1, self.cv2 = ConvBN(c_in, 2 * self.c), ConvBN((2 + n) * self.c, c_out)
        self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class C2fNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.b1 = ConvBN(1, 32, 3), C2fBlock(32, 32)
        self.down, self.b2 = ConvBN(32, 64, 3), C2fBlock(64, 64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b1(self.stem(x))
        h = self.b2(self.down(F.max_pool2d(h, 2)))
        return self.fc(h.mean((2, 3)))


class HalfGate(nn.Module):
    """A gated convolution: ``a, b = h.split(h.shape[1] // 2, 1)``, ``a * sigmoid(b)``, twice."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 64, 3, padding=1), nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(x)
        a, b = h.split(h.shape[1] // 2, 1)
        h = self.c2(a * torch.sigmoid(b))
        a, b = h.split(h.shape[1] // 2, 1)
        return self.fc((a * torch.sigmoid(b)).mean((2, 3)))


class ThreeWay(nn.Module):
    """A chunk into three: two pieces through their own convolution, the third passed on, all concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 48, 3, padding=1)
        self.f, self.g = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.mix = nn.Conv2d(48, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = F.relu(self.stem(x)).chunk(3, 1)
        h = torch.cat([F.relu(self.f(a)), F.relu(self.g(b)), c], 1)
        return self.fc(F.relu(self.mix(h)).mean((2, 3)))


MODELS = {"csp": CSP, "c2f_net": C2fNet, "half_gate": HalfGate, "three_way": ThreeWay}

for _name, _cls in MODELS.items():
    globals()[_name] = _factory(_cls)

"""A Fourier neural operator (thirty-ninth session), as a digits 8x8 classifier (inputs (1, 8, 8)): a 1x1 lift,
two Fourier layers (the lowest modes of ``torch.fft.rfft2`` mixed by complex weights in an einsum, back by
``irfft2``, beside a 1x1 convolution), a 1x1 projection, mean, a classifier; and the same with circular padding
in 3x3 convolutions instead of the Fourier mixing."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "autopilot-thirtyseventh"))
from umodels11 import _factory  # noqa: E402


class SpectralConv(nn.Module):
    def __init__(self, c: int, modes: int = 3) -> None:
        super().__init__()
        self.modes = modes
        scale = 1 / (c * c)
        self.weights = nn.Parameter(scale * torch.randn(c, c, modes, modes, dtype=torch.cfloat))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_ft = torch.fft.rfft2(x)
        out = torch.zeros_like(x_ft)
        m = self.modes
        out[:, :, :m, :m] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, :m, :m], self.weights)
        return torch.fft.irfft2(out, s=x.shape[-2:])


class Fno(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lift = nn.Conv2d(1, 16, 1)
        self.spectral = nn.ModuleList(SpectralConv(16) for _ in range(2))
        self.w = nn.ModuleList(nn.Conv2d(16, 16, 1) for _ in range(2))
        self.proj, self.fc = nn.Conv2d(16, 32, 1), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lift(x)
        for spectral, w in zip(self.spectral, self.w):
            h = F.gelu(spectral(h) + w(h))
        return self.fc(F.gelu(self.proj(h)).mean((2, 3)))


class Periodic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1, padding_mode="circular")
        self.c2 = nn.Conv2d(16, 32, 3, padding=1, padding_mode="circular")
        self.c3 = nn.Conv2d(32, 32, 3, padding=1, padding_mode="circular")
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(self.c1(x))
        h = torch.sigmoid(self.c2(h))
        return self.fc(F.relu(self.c3(h)).mean((2, 3)))


MODELS = {"fno": Fno, "periodic": Periodic}

for _name, _cls in MODELS.items():
    globals()[_name] = _factory(_cls)

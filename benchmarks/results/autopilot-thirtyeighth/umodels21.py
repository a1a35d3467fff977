"""Image-to-image idioms (thirty-eighth session), as digits 8x8 classifiers (inputs (1, 8, 8)): CycleGAN's residual
blocks (reflection padding, InstanceNorm), an upsampling decoder, StyleGAN's pixel norm, a discriminator's minibatch
standard deviation."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "autopilot-thirtyseventh"))
from umodels11 import _factory  # noqa: E402


class _CycleBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c), nn.ReLU(True),
                                  nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c))

    def forward(self, x):
        return x + self.body(x)


class CycleGan(nn.Module):
    """CycleGAN's generator in small: a 7x7 reflection-padded stem with InstanceNorm, a stride-2 convolution, two
    residual blocks, a nearest upsampling and a convolution back, then a classifier head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(1, 16, 7), nn.InstanceNorm2d(16), nn.ReLU(True))
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.InstanceNorm2d(32), nn.ReLU(True))
        self.blocks = nn.Sequential(_CycleBlock(32), _CycleBlock(32))
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(32, 16, 3, padding=1),
                                nn.InstanceNorm2d(16), nn.ReLU(True))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.up(self.blocks(self.down(self.stem(x)))).mean((2, 3)))


class PixelNorm(nn.Module):
    """StyleGAN's pixel norm after each convolution: x / sqrt(mean over the channels of x² + 1e-8)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1), nn.Linear(32, 10)

    @staticmethod
    def norm(x):
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-8)

    def forward(self, x):
        h = self.norm(F.leaky_relu(self.c1(x), 0.2))
        return self.fc(self.norm(F.leaky_relu(self.c2(h), 0.2)).mean((2, 3)))


class MinibatchStd(nn.Module):
    """A discriminator's minibatch standard deviation: one channel of the batch's mean spread concatenated before the
    last convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(17, 32, 3, padding=1), nn.Linear(32, 10)

    def forward(self, x):
        h = F.leaky_relu(self.c1(x), 0.2)
        std = h.std(0).mean().expand(h.shape[0], 1, h.shape[2], h.shape[3])
        return self.fc(F.leaky_relu(self.c2(torch.cat([h, std], 1)), 0.2).mean((2, 3)))


MODELS = {"cycle_gan": CycleGan, "pixel_norm": PixelNorm, "minibatch_std": MinibatchStd}

for _name, _cls in MODELS.items():
    globals()[_name] = _factory(_cls)

"""Small versions of the blocks the thirty-fourth session's zoo sweep found faults in, digits 8x8 (inputs (1, 8, 8)):
a GhostNet (Ghost modules in a residual stream, a strided block read through a depthwise convolution) and a ReXNet
(the shortcut added to a fixed slice of the block's output)."""
import torch
import torch.nn.functional as F
from torch import nn


class Ghost(nn.Module):
    """A 1x1 convolution's output concatenated with a depthwise 3x3 of it."""
    def __init__(self, c_in, c_out, act=True):
        super().__init__()
        h = c_out // 2
        self.primary = nn.Sequential(nn.Conv2d(c_in, h, 1, bias=False), nn.BatchNorm2d(h),
                                     nn.ReLU() if act else nn.Identity())
        self.cheap = nn.Sequential(nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h),
                                   nn.ReLU() if act else nn.Identity())

    def forward(self, x):
        a = self.primary(x)
        return torch.cat([a, self.cheap(a)], 1)


class GhostBottleneck(nn.Module):
    def __init__(self, c_in, mid, c_out, stride=1):
        super().__init__()
        self.g1 = Ghost(c_in, mid)
        self.dw = (nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid))
                   if stride > 1 else nn.Identity())
        self.g2 = Ghost(mid, c_out, act=False)
        self.short = (nn.Identity() if stride == 1 and c_in == c_out else
                      nn.Sequential(nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False), nn.BatchNorm2d(c_in),
                                    nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out)))

    def forward(self, x):
        return self.g2(self.dw(self.g1(x))) + self.short(x)


class GhostNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(GhostBottleneck(16, 32, 24), GhostBottleneck(24, 48, 24),
                                    GhostBottleneck(24, 64, 40, stride=2), GhostBottleneck(40, 80, 40))
        self.head = nn.Sequential(nn.Conv2d(40, 64, 1), nn.ReLU())
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.head(self.blocks(self.stem(x))).mean((2, 3)))


class RexBlock(nn.Module):
    """ReXNet's: expand, depthwise, project; the shortcut is added to the first c_in channels only."""
    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        mid = c_in * 4
        self.c_in, self.use_shortcut = c_in, stride == 1 and c_in <= c_out
        self.exp = nn.Sequential(nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid),
                                nn.ReLU6())
        self.pwl = nn.Sequential(nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = self.pwl(self.dw(self.exp(x)))
        if self.use_shortcut:
            y = torch.cat([y[:, 0:self.c_in] + x, y[:, self.c_in:]], dim=1)
        return y


class ReXNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.SiLU())
        self.blocks = nn.Sequential(RexBlock(16, 20), RexBlock(20, 26), RexBlock(26, 32, stride=2), RexBlock(32, 38))
        self.head = nn.Sequential(nn.Conv2d(38, 64, 1), nn.SiLU())
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(F.dropout(self.head(self.blocks(self.stem(x))).mean((2, 3)), 0.1, self.training))


def ghostnet():
    return GhostNet()


def rexnet():
    return ReXNet()

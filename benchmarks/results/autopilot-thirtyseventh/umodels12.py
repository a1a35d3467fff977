"""More idioms (thirty-seventh session): weight sharing, lazy layers, float64, a fixed blur, frozen layers."""
import torch
import torch.nn.functional as F
from torch import nn
from umodels11 import _factory


class SharedDepth(nn.Module):
    """One Linear applied three times in a loop with a residual (ALBERT-style weight sharing across depth)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.shared, self.fc = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 10)

    def forward(self, x):
        h = F.relu(self.inp(x.flatten(1)))
        for _ in range(3):
            h = h + F.relu(self.shared(h))
        return self.fc(h)


class SharedConv(nn.Module):
    """A convolution applied twice (the same module), then pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 10)

    def forward(self, x):
        h = F.relu(self.c1(x))
        h = F.relu(self.c2(h))
        h = F.relu(self.c2(h))
        return self.fc(h.mean((2, 3)))


class Lazy(nn.Module):
    """Lazy layers: LazyConv2d and LazyLinear infer their inputs at the first call."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.LazyConv2d(16, 3, padding=1), nn.LazyConv2d(32, 3, padding=1)
        self.fc1, self.fc = nn.LazyLinear(32), nn.LazyLinear(10)
        self(torch.zeros(1, 1, 8, 8))  # materialise, as a user's factory would before loading a state dict

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.c2(F.relu(self.c1(x)))), 2)
        return self.fc(F.relu(self.fc1(h.flatten(1))))


class Double(nn.Module):
    """A float64 model (scientific code): the factory returns it in double precision."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.fc = nn.Linear(64, 128), nn.Linear(128, 64), nn.Linear(64, 10)
        self.double()

    def forward(self, x):
        return self.fc(F.relu(self.l2(F.relu(self.l1(x.flatten(1).to(self.l1.weight.dtype))))))


class Blur(nn.Module):
    """Anti-aliased downsampling (BlurPool): a fixed binomial kernel buffer per channel, F.conv2d with groups=C."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("filt", (k[:, None] * k[None, :] / 16).expand(16, 1, 3, 3).clone())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.c1(x))
        h = F.conv2d(F.pad(h, (1, 1, 1, 1), mode="reflect"), self.filt, stride=2, groups=h.shape[1])
        return self.fc(F.relu(self.c2(h)).mean((2, 3)))


class Frozen(nn.Module):
    """A CNN whose first block the user froze (requires_grad=False), as transfer learning leaves it."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)
        self.c1.requires_grad_(False)

    def forward(self, x):
        return self.fc(F.relu(self.c2(F.relu(self.c1(x)))).mean((2, 3)))


MODELS = {"shared_depth": SharedDepth, "shared_conv": SharedConv, "lazy": Lazy, "double": Double, "blur": Blur,
          "frozen": Frozen}


for _name, _cls in MODELS.items():
    globals()[_name] = _factory(_cls)

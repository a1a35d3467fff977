"""Idioms no sweep had tried (thirty-eighth session): parts of the forward that no gradient reaches, as digits 8x8
classifiers (inputs (1, 8, 8))."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "autopilot-thirtyseventh"))
from umodels11 import _factory  # noqa: E402


def _features() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten())


class NoGradBackbone(nn.Module):
    """A linear probe: the feature extractor runs under torch.no_grad() inside the forward, a head trains on it."""

    def __init__(self) -> None:
        super().__init__()
        self.features, self.head = _features(), nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        with torch.no_grad():
            h = self.features(x)
        return self.head(h)


class DetachedBackbone(NoGradBackbone):
    """The same with the features detached (a stop-gradient) instead of torch.no_grad()."""

    def forward(self, x):
        return self.head(self.features(x).detach())


class DetachedSkip(nn.Module):
    """A residual block whose shortcut is detached (the block trains, the stem only through the block)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.c1 = nn.Conv2d(1, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.stem(x))
        h = h.detach() + self.c2(F.relu(self.c1(h)))
        return self.fc(F.relu(h).mean((2, 3)))


MODELS = {"nograd_backbone": NoGradBackbone, "detached_backbone": DetachedBackbone, "detached_skip": DetachedSkip}

for _name, _cls in MODELS.items():
    globals()[_name] = _factory(_cls)

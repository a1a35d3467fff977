"""InstanceNorm after convolutions (thirty-eighth session), as digits 8x8 classifiers (inputs (1, 8, 8)): the
thirty-seventh session's affine model, and the same with InstanceNorm's default (affine=False)."""
import sys
from pathlib import Path

import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "autopilot-thirtyseventh"))
from umodels11 import InstNorm, _factory  # noqa: E402


class InstNormPlain(nn.Module):
    """Convolutions with InstanceNorm2d as torch builds it by default (no affine parameters), then global max pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(1, 16, 3, padding=1), nn.InstanceNorm2d(16)
        self.c2, self.n2 = nn.Conv2d(16, 32, 3, padding=1), nn.InstanceNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.n1(self.c1(x)))
        h = F.relu(self.n2(self.c2(h)))
        return self.fc(h.amax((2, 3)))


MODELS = {"inst_norm": InstNorm, "inst_norm_plain": InstNormPlain}

for _name, _cls in MODELS.items():
    globals()[_name] = _factory(_cls)

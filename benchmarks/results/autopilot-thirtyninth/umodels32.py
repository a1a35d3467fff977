"""wav2vec 2.0's feature encoder in small (thirty-ninth session), as a digits classifier: the 64 pixels as a signal,
a Conv1d without bias, ``nn.GroupNorm(32, 32)`` (one channel per group), GELU; two more Conv1d + GELU; mean over
time, a classifier."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "autopilot-thirtyseventh"))
from umodels11 import _factory  # noqa: E402


class FeatureEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.norm = nn.Conv1d(1, 32, 5, stride=2, bias=False), nn.GroupNorm(32, 32)
        self.c2, self.c3 = nn.Conv1d(32, 64, 3, stride=2, bias=False), nn.Conv1d(64, 64, 3, bias=False)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.norm(self.c1(x.flatten(1).unsqueeze(1))))
        h = F.gelu(self.c3(F.gelu(self.c2(h))))
        return self.fc(h.mean(2))


MODELS = {"feature_encoder": FeatureEncoder}

for _name, _cls in MODELS.items():
    globals()[_name] = _factory(_cls)

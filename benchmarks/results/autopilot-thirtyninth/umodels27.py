"""YOLOv8's other blocks (thirty-ninth session), as digits 8x8 classifiers (inputs (1, 8, 8)): SPPF (one max pool
applied three times in a row, the input and its three poolings concatenated), and a C2f whose halves come from a
``split((c, c), 1)`` with sizes read from the module (YOLOv8's ``forward_split``)."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from umodels24 import C2fBlock, ConvBN, _factory  # noqa: E402


class Sppf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.cv1, self.cv2 = ConvBN(1, 32, 3), ConvBN(32, 16), ConvBN(64, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(self.stem(x))]
        y.extend(F.max_pool2d(y[-1], 5, 1, 2) for _ in range(3))
        return self.fc(self.cv2(torch.cat(y, 1)).mean((2, 3)))


class SplitC2f(C2fBlock):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SplitC2fNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.b1, self.fc = ConvBN(1, 32, 3), SplitC2f(32, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.b1(self.stem(x)).mean((2, 3)))


MODELS = {"sppf": Sppf, "split_c2f": SplitC2fNet}

for _name, _cls in MODELS.items():
    globals()[_name] = _factory(_cls)

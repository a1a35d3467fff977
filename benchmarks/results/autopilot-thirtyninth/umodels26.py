"""Models as tutorials write them (thirty-ninth session), as digits 8x8 classifiers (inputs (1, 8, 8)): PyTorch's
MNIST example (dropout, ``F.log_softmax`` in the forward), one encoder applied to the image and to its mirror with
``|a − b|`` and the sum beside each other, and a text CNN over the pixel values as tokens (an embedding of the
0…16 grey levels, convolutions of widths 2, 3 and 4, max over time, concatenated)."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "autopilot-thirtyseventh"))
from umodels11 import _factory  # noqa: E402


class MnistExample(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1)
        self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
        self.fc1, self.fc2 = nn.Linear(64 * 2 * 2, 128), nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = self.dropout1(F.max_pool2d(x, 2))
        x = self.dropout2(F.relu(self.fc1(torch.flatten(x, 1))))
        return F.log_softmax(self.fc2(x), dim=1)


class Siamese(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                                     nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.encoder(x), self.encoder(x.flip(-1))
        return self.head(torch.cat([(a - b).abs(), a + b], 1))


class TextCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(17, 16)
        self.convs = nn.ModuleList(nn.Conv1d(16, 24, k) for k in (2, 3, 4))
        self.dropout, self.fc = nn.Dropout(0.5), nn.Linear(72, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(1).round().clamp(0, 16).long()
        h = self.embed(tokens).transpose(1, 2)
        pooled = [F.max_pool1d(F.relu(conv(h)), h.shape[2] - conv.kernel_size[0] + 1).squeeze(2) for conv in self.convs]
        return self.fc(self.dropout(torch.cat(pooled, 1)))


MODELS = {"mnist_example": MnistExample, "siamese": Siamese, "text_cnn": TextCnn}

for _name, _cls in MODELS.items():
    globals()[_name] = _factory(_cls)

"""Small networks written with idioms no sweep had tried, through zoo_matrix's cells (convert, two training steps,
half of every noise tensor forced past the threshold, slim, export, onnxruntime parity).

    python benchmarks/results/autopilot-thirtyfifth/idioms.py [NAME ...]

One JSON line per cell in idioms.jsonl beside this file; the cell's one-line verdict and notes printed."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import zoo_matrix  # noqa: E402


def stem(c: int = 16) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                         nn.Conv2d(c, 2 * c, 3, padding=1, stride=2), nn.BatchNorm2d(2 * c), nn.ReLU())


class CosineHead(nn.Module):
    """A cosine classifier: normalised features against normalised class weights held as a raw Parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.weight = stem(), nn.Parameter(torch.randn(10, 32))

    def forward(self, x):
        h = F.normalize(self.body(x).mean((2, 3)), dim=1)
        return 16 * F.linear(h, F.normalize(self.weight, dim=1))


class NormalizedMap(nn.Module):
    """Feature maps L2-normalised over the channels at every pixel (a descriptor network), then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.conv, self.fc = stem(), nn.Conv2d(32, 24, 3, padding=1), nn.Linear(24, 10)

    def forward(self, x):
        return self.fc(F.normalize(self.conv(self.body(x)), dim=1).mean((2, 3)))


class WhereGate(nn.Module):
    """torch.where selects one branch's value where another branch is positive."""

    def __init__(self) -> None:
        super().__init__()
        self.body = stem()
        self.a, self.b = nn.Conv2d(32, 24, 1), nn.Conv2d(32, 24, 1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        h = self.body(x)
        a, b = self.a(h), self.b(h)
        return self.fc(torch.where(b > 0, a, torch.zeros_like(a)).mean((2, 3)))


class Orthogonal(nn.Module):
    """An MLP whose middle layer is parametrised orthogonal (torch.nn.utils.parametrizations.orthogonal)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3 * 16 * 16, 64)
        self.mid = nn.utils.parametrizations.orthogonal(nn.Linear(64, 64))
        self.out = nn.Linear(64, 10)

    def forward(self, x):
        return self.out(torch.relu(self.mid(torch.relu(self.inp(x.flatten(1))))))


class ChannelsLastMlp(nn.Module):
    """A CNN whose pointwise block is two Linears over the channels of a permuted map, added back (ConvNeXt written
    without its LayerNorm)."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.up, self.down = stem(), nn.Linear(32, 64), nn.Linear(64, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = self.body(x)
        t = self.down(F.gelu(self.up(h.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)
        return self.fc((h + t).mean((2, 3)))


class Cumsum(nn.Module):
    """A cumulative sum over the channels: a zeroed channel's place still holds the sum before it."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.conv, self.fc = stem(), nn.Conv2d(32, 16, 1), nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.cumsum(self.conv(self.body(x)), dim=1).mean((2, 3)))


class Cbam(nn.Module):
    """CBAM's spatial attention: the mean and max over the channels, a 7x7 convolution, a sigmoid, a product."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.conv = stem(), nn.Conv2d(32, 32, 3, padding=1)
        self.att, self.fc = nn.Conv2d(2, 1, 7, padding=3), nn.Linear(32, 10)

    def forward(self, x):
        h = self.conv(self.body(x))
        s = torch.cat([h.mean(1, keepdim=True), h.amax(1, keepdim=True)], 1)
        return self.fc((h * torch.sigmoid(self.att(s))).mean((2, 3)))


class Upsampled(nn.Module):
    """Bilinear upsampling by a scale factor between convolutions, then nearest back down."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.conv, self.fc = stem(), nn.Conv2d(32, 24, 3, padding=1), nn.Linear(24, 10)

    def forward(self, x):
        h = F.interpolate(self.body(x), scale_factor=2, mode="bilinear", align_corners=False)
        return self.fc(F.interpolate(self.conv(h), scale_factor=0.5, mode="nearest").mean((2, 3)))


MODELS = {"cosine_head": CosineHead, "normalized_map": NormalizedMap, "where_gate": WhereGate,
          "orthogonal": Orthogonal, "channels_last_mlp": ChannelsLastMlp, "cumsum": Cumsum, "cbam": Cbam,
          "upsampled": Upsampled}


if __name__ == "__main__":
    zoo_matrix.own_models(MODELS, (3, 16, 16), sys.argv[1:], HERE / "idioms.jsonl")

"""Channel patterns that Torch-Pruning's dependency graph misread, through ``prunedrop compress`` on digits.

    python benchmarks/graph_patterns_digits.py --model sliced                 # recipes/sbp.yaml, the default budget
    python benchmarks/graph_patterns_digits.py --model input_concat
    python benchmarks/graph_patterns_digits.py --model se_expand
    python benchmarks/graph_patterns_digits.py --model glu_conv
    python benchmarks/graph_patterns_digits.py --model subpixel
    python benchmarks/graph_patterns_digits.py --model att_gate
    python benchmarks/graph_patterns_digits.py --model cosine
    python benchmarks/graph_patterns_digits.py --model sliced --tag before    # the same, run from an older checkout

Small CNNs on scikit-learn's 8x8 digits (prunedrop's own split of ``--data digits``), each with one pattern:

- ``sliced``: a stem of 16 channels whose first 8 feed a second convolution (24 channels) and whose last 8 are
  pooled and concatenated beside it, ``x[:, :8]`` / ``x[:, 8:]``; the concatenation's sliced input has a width that
  Torch-Pruning cannot infer, so it gave the concatenation no mapping and the second convolution's channels looked
  coupled to the stem's (nothing left);
- ``input_concat``: the input image concatenated before the stem's 16 channels (``torch.cat([x, h], 1)``, as
  refinement networks do), then two convolutions; the image has no autograd node, so Torch-Pruning placed the
  stem's channel k at k instead of k + 1 and kept the stem's pruned channels;
- ``se_expand``: an inverted residual (1x1 expansion to 48, depthwise 3x3, 1x1 projection, added to the stem) with a
  squeeze-excitation written as the widely copied SENet code does (``y * s.view(b, c, 1, 1).expand_as(y)``);
  Torch-Pruning's expand node read the expand as mixing channels, so the block was left dense;
- ``glu_conv``: a Conformer's convolution module over the image's rows as a sequence (8 features, 8 steps): a stem
  of 32 channels, a pointwise convolution to 128, ``nn.GLU(dim=1)``, a depthwise convolution of 64, BatchNorm, SiLU,
  a pointwise convolution back to 32, added to the stem; the GLU was stopped as moving channels, so the pointwise
  convolution before it and the depthwise one after it were left dense;
- ``subpixel``: an upsampling block in the middle (EDSR's, NAFNet's): two convolutions down to 4x4, a convolution
  to 64 channels, ``nn.PixelShuffle(2)`` back to 16 channels at 8x8, a convolution of 32; the pixel shuffle was
  stopped, so the convolution before it was left dense;
- ``att_gate``: an attention U-Net's gate in a classifier: a one-channel map (a 1x1 convolution of the two
  features' projections, its sigmoid) multiplies the second convolution's 32 channels; the map's unit was read as
  coupled to channel 0 of them, and the others were never analysed (their pruned units stayed, unnamed);
- ``cosine``: three convolutions, the pooled features normalized (``F.normalize``, as metric-learning heads do)
  before the classifier; the norm's expand over the features was read as mixing them (the last convolution left
  dense).

Each is trained dense here (Adam 3e-3, 30 epochs, batch 64, seed 0; cached in ``benchmarks/results``, not tracked),
then ``prunedrop compress --recipe recipes/sbp.yaml`` runs on it (the autopilot, budget 1 point), and
``benchmarks/results/graph-patterns-<model>-<tag>.json`` keeps the report's numbers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root (python benchmarks/<script>.py)

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import RESULTS, ROOT, record_compress, rel


class Sliced(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(8, 24, 3, padding=1)
        self.fc = nn.Linear(24 + 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c1(x))
        y = F.relu(self.c2(x[:, :8]))
        return self.fc(torch.cat([y.mean((2, 3)), x[:, 8:].amax((2, 3))], 1))


class InputConcat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2, self.c3 = nn.Conv2d(17, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, F.relu(self.c1(x))], 1)
        h = F.max_pool2d(F.relu(self.c2(h)), 2)
        return self.fc(F.relu(self.c3(h)).mean((2, 3)))


class SEExpand(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.exp = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 48, 1)
        self.dw = nn.Conv2d(48, 48, 3, padding=1, groups=48)
        self.fc1, self.fc2 = nn.Linear(48, 12), nn.Linear(12, 48)
        self.proj, self.fc = nn.Conv2d(48, 16, 1), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        y = F.relu(self.dw(F.relu(self.exp(x))))
        b, c = y.shape[:2]
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean((2, 3)))))).view(b, c, 1, 1)
        return self.fc((x + self.proj(y * s.expand_as(y))).mean((2, 3)))


class GLUConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.pw1, self.glu = nn.Conv1d(8, 32, 3, padding=1), nn.Conv1d(32, 128, 1), nn.GLU(dim=1)
        self.dw, self.bn = nn.Conv1d(64, 64, 5, padding=2, groups=64), nn.BatchNorm1d(64)
        self.pw2, self.fc = nn.Conv1d(64, 32, 1), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.stem(x.flatten(1, 2)))  # (batch, 8 rows as features, 8 columns as steps)
        h = h + self.pw2(F.silu(self.bn(self.dw(self.glu(self.pw1(h))))))
        return self.fc(h.mean(2))


class SubPixel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.up, self.ps = nn.Conv2d(32, 64, 3, padding=1), nn.PixelShuffle(2)
        self.c3, self.fc = nn.Conv2d(16, 32, 3, padding=1), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.c2(F.max_pool2d(F.relu(self.c1(x)), 2)))  # 32 channels at 4x4
        h = F.relu(self.ps(self.up(h)))  # 16 at 8x8
        return self.fc(F.relu(self.c3(h)).mean((2, 3)))


class AttGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.wg, self.wx, self.psi = nn.Conv2d(16, 16, 1), nn.Conv2d(32, 16, 1), nn.Conv2d(16, 1, 1)
        self.c3, self.fc = nn.Conv2d(32, 32, 3, padding=1), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = F.relu(self.c1(x))
        h = F.relu(self.c2(g))
        a = torch.sigmoid(self.psi(F.relu(self.wg(g) + self.wx(h))))  # (batch, 1, 8, 8)
        return self.fc(F.relu(self.c3(h * a)).mean((2, 3)))


class Cosine(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.c3, self.fc = nn.Conv2d(32, 64, 3, padding=1), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.c2(F.relu(self.c1(x)))), 2)
        return self.fc(10 * F.normalize(F.relu(self.c3(h)).mean((2, 3)), dim=1))


MODELS = {"sliced": Sliced, "input_concat": InputConcat, "se_expand": SEExpand, "glu_conv": GLUConv,
          "subpixel": SubPixel, "att_gate": AttGate, "cosine": Cosine}


def train(name: str) -> nn.Module:
    """The dense model, trained on prunedrop's digits training split: Adam 3e-3, 30 epochs, batch 64, seed 0."""
    from benchmarks.segmentation_digits import train as train_dense
    from prunedrop.data import load_data

    return train_dense(MODELS[name], {"train": load_data("digits", seed=0).train.tensors}, 30, F.cross_entropy)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=list(MODELS), required=True)
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "sbp.yaml",
                        help="recipe for prunedrop compress (default: recipes/sbp.yaml)")
    parser.add_argument("--tag", default="sbp", help="name of the result (default: sbp)")
    args = parser.parse_args(argv)
    dense = RESULTS / f"graph-patterns-{args.model}-dense.pt"
    if not dense.exists():
        torch.save(train(args.model).state_dict(), dense)
    out = ROOT / "runs" / f"graph-patterns-{args.model}-{args.tag}"
    cmd = [sys.executable, "-m", "prunedrop", "compress", rel(dense), "--arch",
           f"benchmarks.graph_patterns_digits:{MODELS[args.model].__name__}", "--data", "digits", "--recipe", rel(args.recipe),
           "-o", rel(out), "--overwrite"]
    record_compress(cmd, out, ("params", "flops", "onnx_bytes", "metric", "test_metric", "latency",
                    "autopilot", "threshold", "slim", "conversion"), RESULTS / f"graph-patterns-{args.model}-{args.tag}.json")


if __name__ == "__main__":
    main()

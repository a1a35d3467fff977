"""A multi-label classifier through ``prunedrop compress`` with no recipe (and with ``recipes/sbp.yaml``): which
Fashion-MNIST classes appear in a 2×2 grid of items.

    python benchmarks/multilabel_fashion.py                          # the default command (sparse VD, budget 1)
    python benchmarks/multilabel_fashion.py --recipe recipes/sbp.yaml --tag sbp

Each sample is a 56×56 image of four 28×28 cells, each holding a random Fashion-MNIST item with probability 1/2
(else blank); its labels are the 10 classes, 1 where an item of the class appears (0 to 4 classes per image, each
present in about 18.5% of the images). 12,000 training images are drawn from prunedrop's Fashion-MNIST training
split, 2,000 validation images from its validation split and 2,000 test images from the test split (seed 0), and
saved as ``runs/multilabel-fashion.npz`` (int64 0/1 labels shaped (N, 10)). The dense model (a CNN of four
convolutions, global max pooling and a linear head: :class:`GridTagger`) is trained here with binary cross-entropy
per output (Adam 2e-3 on a cosine schedule, 20 epochs, batch 100, seed 0; cached in
``benchmarks/results/multilabel-fashion-dense.pt``).
``prunedrop compress`` reads the labels as a multi-label model's by itself; the accuracy is over every label of
every image. Result: ``benchmarks/results/multilabel-fashion-<tag>.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root (python benchmarks/<script>.py)

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import compress_task

SIZES = {"train": 12_000, "val": 2_000, "test": 2_000}
EPOCHS = 20


class GridTagger(nn.Module):
    """Four 3×3 convolutions (1 → 8 → 16 → 32 → 64 channels, a 2×2 max pool after each of the first three), a
    global max pool (an item anywhere in the grid) and a logit per class."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()

        def block(cin: int, cout: int, pool: bool = True) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), *([nn.MaxPool2d(2)] if pool else [])]

        self.features = nn.Sequential(*block(1, 8), *block(8, 16), *block(16, 32), *block(32, 64, pool=False))
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.amax(self.features(x), dim=(2, 3)))


def grids(x: torch.Tensor, y: torch.Tensor, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 2×2 grids of items of ``x`` (N, 1, 28, 28) and their multi-hot class labels."""
    images = np.zeros((n, 1, 56, 56), dtype=np.float32)
    labels = np.zeros((n, 10), dtype=np.int64)
    for i in range(n):
        for cell in range(4):
            if rng.random() < 0.5:
                k = int(rng.integers(len(x)))
                r, c = divmod(cell, 2)
                images[i, 0, 28 * r:28 * r + 28, 28 * c:28 * c + 28] = x[k, 0].numpy()
                labels[i, int(y[k])] = 1
    return images, labels


def make_data(path: Path) -> None:
    from prunedrop.data import load_data

    bundle = load_data("fashion-mnist", seed=0)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in SIZES.items():
        x, y = getattr(bundle, split).tensors
        arrays[f"x_{split}"], arrays[f"y_{split}"] = grids(x.reshape(-1, 1, 28, 28), y, n, rng)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def train(data: Path) -> nn.Module:
    arrays = np.load(data)
    x, y = torch.from_numpy(arrays["x_train"]), torch.from_numpy(arrays["y_train"]).float()
    torch.manual_seed(0)
    model = GridTagger()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS * ((len(x) + 99) // 100))
    for epoch in range(EPOCHS):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 100):
            batch = order[i:i + 100]
            loss = F.binary_cross_entropy_with_logits(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            xv, yv = torch.from_numpy(arrays["x_val"]), torch.from_numpy(arrays["y_val"])
            right = ((model(xv) > 0).long() == yv).float().mean()
        print(f"dense epoch {epoch + 1}: label accuracy on validation data {100 * float(right):.2f}", file=sys.stderr)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    torch.set_num_threads(2)
    compress_task("multilabel-fashion", "benchmarks.multilabel_fashion:GridTagger", make_data, train, argv,
                  __doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()

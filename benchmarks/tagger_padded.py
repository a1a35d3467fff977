"""A tagger of padded sequences (labels -100 on the padding) through ``prunedrop compress`` with no recipe.

    python benchmarks/tagger_padded.py

The task (synthetic, seed 0): sequences of 5 to 40 tokens (ids 1 … 49) padded to 40 with id 0; each token's tag (8
tags) is its id mod 8, shifted by 1 where the token before it is below 25 and by 2 where the token after it is
(the first and last tokens see a 0 beyond the sequence), then 15% of the tags are replaced by random ones (so that
no model scores above about 87%, as on real data); the padding's tag is -100, as Hugging Face pads token labels. 4,000 / 1,000 / 1,000 sequences, saved as ``runs/tagger-padded.npz``. The dense model
(:class:`PaddedTagger`: an embedding of 32, two 1-d convolutions of width 5 with 64 channels, a 1×1 convolution to
the 8 tags) is trained here with torch's cross-entropy, which ignores -100 itself (Adam 3e-3, 30 epochs, batch 64,
seed 0; cached in ``benchmarks/results/tagger-padded-dense.pt``). The accuracy is over the real tokens alone.
Result: ``benchmarks/results/tagger-padded-<tag>.json``.
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

SIZES = {"train": 4_000, "val": 1_000, "test": 1_000}
LENGTH, VOCAB, TAGS, EPOCHS, NOISE = 40, 50, 8, 30, 0.15


class PaddedTagger(nn.Module):
    """Token ids (N, 40) → tag logits (N, 8, 40)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 32)
        self.conv1 = nn.Conv1d(32, 64, 5, padding=2)
        self.conv2 = nn.Conv1d(64, 64, 5, padding=2)
        self.out = nn.Conv1d(64, TAGS, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(self.emb(x).transpose(1, 2)))
        return self.out(torch.relu(self.conv2(h)))


def sequences(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.integers(1, VOCAB, (n, LENGTH))
    lengths = rng.integers(5, LENGTH + 1, n)
    pad = np.arange(LENGTH)[None, :] >= lengths[:, None]
    x[pad] = 0
    before = np.concatenate([np.zeros((n, 1), dtype=x.dtype), x[:, :-1]], 1)
    after = np.concatenate([x[:, 1:], np.zeros((n, 1), dtype=x.dtype)], 1)
    y = (x % TAGS + (before < 25) * 1 + (after < 25) * 2) % TAGS
    noisy = rng.random((n, LENGTH)) < NOISE
    y[noisy] = rng.integers(0, TAGS, int(noisy.sum()))
    y[pad] = -100
    return x.astype(np.int64), y.astype(np.int64)


def make_data(path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in SIZES.items():
        arrays[f"x_{split}"], arrays[f"y_{split}"] = sequences(n, rng)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def train(data: Path) -> nn.Module:
    arrays = np.load(data)
    x, y = torch.from_numpy(arrays["x_train"]), torch.from_numpy(arrays["y_train"])
    xv, yv = torch.from_numpy(arrays["x_val"]), torch.from_numpy(arrays["y_val"])
    torch.manual_seed(0)
    model = PaddedTagger()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(EPOCHS):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            batch = order[i:i + 64]
            loss = F.cross_entropy(model(x[batch]), y[batch])  # ignore_index=-100 by default
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            real = yv != -100
            right = (model(xv).argmax(1) == yv)[real].float().mean()
        print(f"dense epoch {epoch + 1}: tag accuracy on validation data {100 * float(right):.2f}", file=sys.stderr)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    compress_task("tagger-padded", "benchmarks.tagger_padded:PaddedTagger", make_data, train, argv,
                  __doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()

"""Models that predict per position through ``prunedrop compress``: a small U-Net segmenting scikit-learn's digits,
and a denoising autoencoder (a value per pixel, ``--loss mse``).

    python benchmarks/segmentation_digits.py                        # the data, the dense U-Net, the default command
    python benchmarks/segmentation_digits.py --recipe recipes/sbp.yaml --tag sbp
    python benchmarks/segmentation_digits.py --task denoise [--recipe recipes/sbp.yaml --tag sbp]

The task: each 8x8 digit upsampled to 16x16 (nearest), every pixel brighter than 0.25 labelled with its digit + 1,
the others 0 (background): 11 classes per pixel, (N, 1, 16, 16) inputs against (N, 16, 16) masks; 1,100 training,
350 validation and 347 test images (a seeded shuffle). The U-Net (``unet``): two 3x3 conv + BatchNorm + ReLU blocks per
level (16, 32, 64 channels), max pooling down, 2x2 transposed convolutions up, skip connections concatenated, a 1x1
head; trained here with Adam 3e-3, 25 epochs, batch 64, seed 0 (cached in ``benchmarks/results``). Then the CLI's
command runs on the npz file (the run folder: ``runs/segmentation-unet-<tag>``), and
``benchmarks/results/segmentation-unet-<tag>.json`` keeps the report's numbers.

``--task denoise``: the same images with Gaussian noise (σ 0.3, seeded, clipped to [0, 1]) as inputs and the clean
images as targets; the autoencoder (``autoencoder``): two 3x3 stride-2 convolutions (16, 32 channels), two 2x2
stride-2 transposed convolutions (16, 8), a 3x3 output convolution; trained with Adam 3e-3, 40 epochs, batch 64, seed
0, mean squared error; then ``prunedrop compress --loss mse`` (the budget: 1% more validation error by default) →
``benchmarks/results/denoise-ae-<tag>.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root (python benchmarks/<script>.py)

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import RESULTS, ROOT, record_compress, rel


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """Two levels down, two up, concatenated skips; (N, 1, H, W) → (N, classes, H, W) for H, W divisible by 4."""

    def __init__(self, width: int = 16, classes: int = 11) -> None:
        super().__init__()
        c = width
        self.e1, self.e2, self.b = _block(1, c), _block(c, 2 * c), _block(2 * c, 4 * c)
        self.u2, self.d2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2), _block(4 * c, 2 * c)
        self.u1, self.d1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2), _block(2 * c, c)
        self.head = nn.Conv2d(c, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.e1(x)
        e2 = self.e2(F.max_pool2d(e1, 2))
        b = self.b(F.max_pool2d(e2, 2))
        d2 = self.d2(torch.cat([self.u2(b), e2], 1))
        return self.head(self.d1(torch.cat([self.u1(d2), e1], 1)))


class Autoencoder(nn.Module):
    """(N, 1, H, W) → (N, 1, H, W) for H, W divisible by 4: strided convolutions down, transposed convolutions up."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.dec = nn.Sequential(nn.ConvTranspose2d(32, 16, 2, stride=2), nn.ReLU(),
                                 nn.ConvTranspose2d(16, 8, 2, stride=2), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(self.enc(x))


def autoencoder() -> nn.Module:
    """The factory for ``--arch benchmarks.segmentation_digits:autoencoder``."""
    return Autoencoder()


def denoising_splits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The segmentation splits' images, noisy as inputs and clean as targets."""
    noise = torch.Generator().manual_seed(3)
    out = {}
    for split, (x, _) in segmentation_splits().items():
        out[split] = ((x + 0.3 * torch.randn(x.shape, generator=noise)).clamp(0, 1), x)
    return out


def unet() -> nn.Module:
    """The factory for ``--arch benchmarks.segmentation_digits:unet``."""
    return UNet()


def segmentation_splits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = F.interpolate(torch.from_numpy(digits.images).float().div(16).unsqueeze(1), scale_factor=2, mode="nearest")
    y = torch.where(x[:, 0] > 0.25, torch.from_numpy(digits.target).long()[:, None, None] + 1,
                    torch.zeros((), dtype=torch.long))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return {"train": (x[:1100], y[:1100]), "val": (x[1100:1450], y[1100:1450]), "test": (x[1450:], y[1450:])}


def train(factory, splits: dict[str, tuple[torch.Tensor, torch.Tensor]], epochs: int, loss) -> nn.Module:
    """A dense model from ``factory`` trained on the training split: Adam 3e-3, batch 64, seed 0, ``loss``."""
    x, y = splits["train"]
    torch.manual_seed(0)
    model = factory()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(64):
            value = loss(model(x[idx]), y[idx])
            opt.zero_grad()
            value.backward()
            opt.step()
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, help="recipe for prunedrop compress (default: none, the defaults)")
    parser.add_argument("--tag", default="default", help="name of the result (default: default)")
    parser.add_argument("--task", choices=["segment", "denoise"], default="segment",
                        help="segment: the U-Net, a class per pixel (default); denoise: the autoencoder, a value per pixel")
    args = parser.parse_args(argv)
    denoise = args.task == "denoise"
    name = "denoise-ae" if denoise else "segmentation-unet"
    splits = denoising_splits() if denoise else segmentation_splits()
    (ROOT / "runs").mkdir(exist_ok=True)
    data = ROOT / "runs" / f"{'denoise' if denoise else 'segmentation'}-digits.npz"  # small; runs/ is not tracked
    np.savez(data, **{f"{k}_{s}": t.numpy() for s, pair in splits.items() for k, t in zip("xy", pair)})
    dense = RESULTS / f"{name}-dense.pt"
    if not dense.exists():
        trained = train(autoencoder, splits, 40, F.mse_loss) if denoise else train(unet, splits, 25, F.cross_entropy)
        torch.save(trained.state_dict(), dense)
    out = ROOT / "runs" / f"{name}-{args.tag}"
    cmd = [sys.executable, "-m", "prunedrop", "compress", rel(dense), "--arch",
           f"benchmarks.segmentation_digits:{'autoencoder' if denoise else 'unet'}", "--data", f"npz:{rel(data)}",
           "-o", rel(out), "--overwrite", *(["--loss", "mse"] if denoise else [])]
    if args.recipe is not None:
        cmd += ["--recipe", str(args.recipe)]
    record_compress(cmd, out, ("params", "flops", "onnx_bytes", "metric", "test_metric", "latency",
                    "per_class", "autopilot", "threshold"), RESULTS / f"{name}-{args.tag}.json")


if __name__ == "__main__":
    main()

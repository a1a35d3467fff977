"""The autopilot on small models nobody tuned for: scikit-learn's digits, the default recipe, no β.

    python benchmarks/autopilot_small.py                       # every model, the default recipe (sparse VD, 1 pt)
    python benchmarks/autopilot_small.py --models cnn rescnn --method sbp
    python benchmarks/autopilot_small.py --models cnn --method sbp --target flops=3x
    python benchmarks/autopilot_small.py --models conv1d gru attention lnres weightnorm hooknorm prelu groupnorm \
        --tag thirteenth                                       # architectures added in the thirteenth session

Each model is trained dense here (Adam, 40 epochs, seed 0; cached in ``benchmarks/results/autopilot-dense-*.pt``)
on the digits training split, then compressed by ``prunedrop.pipeline.compress`` with ``Recipe()`` plus only
``--method``/``--max-drop``/``--target`` (and no latency timing, plots or Monte Carlo calibration, which do not
change the model). The table gives validation and test accuracy before and after (the test split is never seen
by the run), the compression and what the autopilot did. Results: ``benchmarks/results/autopilot-small-*.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root (python benchmarks/<script>.py)

import torch
from torch import nn

from benchmarks.common import RESULTS, budget_arg, with_budget, write_rows
from examples.train_dense import fit_dense
from prunedrop.data import load_data
from prunedrop.pipeline import compress
from prunedrop.recipes import Recipe
from prunedrop.testing import TinyRecurrentClassifier, TransformerClassifier


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class SmallResCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.block1, self.block2 = ResBlock(32), ResBlock(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(torch.relu(self.bn(self.stem(x)))))
        return self.fc(x.mean(dim=(2, 3)))


class Conv1dNet(nn.Module):
    """The image's 8 rows as 8 channels of 8 steps; a dilated second convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(8, 32, 3, padding=1)
        self.c2 = nn.Conv1d(32, 32, 3, padding=2, dilation=2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c2(torch.relu(self.c1(x.reshape(x.size(0), 8, 8)))))
        return self.fc(x.mean(-1))


class AttentionNet(nn.Module):
    """nn.MultiheadAttention over the 8 rows, a residual and a LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 32)
        self.att = nn.MultiheadAttention(32, 4, batch_first=True)
        self.ln = nn.LayerNorm(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x.reshape(x.size(0), 8, 8))
        return self.fc(self.ln(h + self.att(h, h, h)[0]).mean(1))


class LayerNormResMLP(nn.Module):
    """Two pre-LayerNorm residual MLP blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(64, 64)
        self.blocks = nn.ModuleList([nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 128), nn.GELU(),
                                                   nn.Linear(128, 64)) for _ in range(2)])
        self.out = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x.flatten(1))
        for block in self.blocks:
            x = x + block(x)
        return self.out(x)


def weight_norm_mlp() -> nn.Module:
    """The first layer reparametrized by ``parametrizations.weight_norm``."""
    return nn.Sequential(nn.Flatten(), nn.utils.parametrizations.weight_norm(nn.Linear(64, 128)), nn.ReLU(),
                         nn.Linear(128, 10))


def hook_norm_mlp() -> nn.Module:
    """The deprecated hook-based ``weight_norm`` and ``spectral_norm``."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return nn.Sequential(nn.Flatten(), nn.utils.weight_norm(nn.Linear(64, 128)), nn.ReLU(),
                             nn.utils.spectral_norm(nn.Linear(128, 64)), nn.ReLU(), nn.Linear(64, 10))


class PReLUNet(nn.Module):
    """A strided, reflect-padded convolution, BatchNorms after bias-free convolutions, a per-channel PReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, stride=2, padding=1, padding_mode="reflect", bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.act = nn.PReLU(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.c1(x.reshape(x.size(0), 1, 8, 8))))
        return self.fc(self.act(self.bn2(self.c2(x))).mean((2, 3)))


class GroupNormCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.c2, self.n2 = nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(8, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.n1(self.c1(x.reshape(x.size(0), 1, 8, 8))))
        return self.fc(torch.relu(self.n2(self.c2(x))).mean((2, 3)))


MODELS = {
    "mlp": lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                                 nn.Linear(128, 10)),
    "cnn": SmallCNN,
    "lstm": lambda: TinyRecurrentClassifier("lstm", in_features=8, hidden=64, num_classes=10),
    "transformer": lambda: TransformerClassifier(in_features=8, seq_len=8, d_model=32, num_heads=4, ff=64,
                                                 num_layers=2, num_classes=10),
    "rescnn": SmallResCNN,
    # thirteenth session: architectures the first five did not cover
    "conv1d": Conv1dNet,
    "gru": lambda: TinyRecurrentClassifier("gru", in_features=8, hidden=64, num_classes=10),
    "rnn": lambda: TinyRecurrentClassifier("rnn", in_features=8, hidden=64, num_classes=10),
    "attention": AttentionNet,
    "lnres": LayerNormResMLP,
    "weightnorm": weight_norm_mlp,
    "hooknorm": hook_norm_mlp,
    "prelu": PReLUNet,
    "groupnorm": GroupNormCNN,
}


def dense(name: str, data, epochs: int) -> nn.Module:
    cache = RESULTS / f"autopilot-dense-{name}-e{epochs}.pt"
    torch.manual_seed(0)
    model = MODELS[name]()
    if cache.exists():
        model.load_state_dict(torch.load(cache, weights_only=True))
        return model.eval()
    model = fit_dense(model, data, epochs, lr=2e-3, batch_size=50, log=lambda msg: None).cpu().eval()
    torch.save(model.state_dict(), cache)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS)[:5], choices=list(MODELS),
                   help="default: the first five (mlp cnn lstm transformer rescnn)")
    p.add_argument("--method", default="sparse_vd")
    p.add_argument("--max-drop", type=budget_arg, default=None,
                   help="the recipe's max_metric_drop (default: the built-in 1 point); none = no budget (a target alone)")
    p.add_argument("--target", default=None)
    p.add_argument("--dense-epochs", type=int, default=40)
    p.add_argument("--finetune-lr", type=float, default=None,
                   help="the recipe's finetune_lr (default: the built-in default's)")
    p.add_argument("--seed", type=int, default=None, help="the recipe's seed (the run's noise and batches; the dense "
                   "model stays the one trained with seed 0)")
    p.add_argument("--latency-runs", type=int, default=0,
                   help="the recipe's latency_runs (default 0: nothing timed, so slimming removes every pruned channel "
                   "instead of timing widths rounded to multiples of 8); the rows record the medians")
    p.add_argument("--tag", default="", help="suffix of the result file")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_data("digits", seed=0)
    rows = []
    for name in args.models:
        model = dense(name, data, args.dense_epochs)
        changes = {"method": args.method, "latency_runs": args.latency_runs, "plots": False, "mc_samples": 0, "target": args.target}
        if args.seed is not None:
            changes["seed"] = args.seed
        if args.finetune_lr is not None:
            changes["finetune_lr"] = args.finetune_lr
        recipe = with_budget(Recipe().replace(**changes), args.max_drop)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            result = compress(model, data, recipe, out, progress=False, log=lambda msg: None)
        r = result.report
        pilot = r.get("autopilot") or {}
        row = {
            "model": name, "method": args.method, "budget": recipe.max_metric_drop, "target": args.target,
            "seed": recipe.seed,
            "val_before": r["metric"]["before"], "val_after": r["metric"]["after"],
            "test_before": r["test_metric"]["before"], "test_after": r["test_metric"]["after"],
            "params_ratio": r["params"]["ratio"], "flops_ratio": r["flops"]["ratio"],
            "nonzero_flops_ratio": r["flops"]["nonzero_ratio"],
            "variational_epochs": r.get("variational_epochs"), "steps": (pilot.get("last_check") or {}).get("step"),
            "stopped_early": pilot.get("stopped_early"), "beta_final": pilot.get("beta_final"),
            "bound": pilot.get("bound"), "target_outcome": r.get("target"), "threshold": r["threshold"],
            "finetune_lr": r["recipe"]["finetune_lr"], "lr_scale": pilot.get("lr_scale"),
            "wall_s": time.perf_counter() - t0,
            "widths": (r.get("slim") or {}).get("widths"),  # how slimming chose the widths (channel_multiple: null)
            "onnx_bytes": r.get("onnx_bytes"), "latency": r.get("latency"),
            "shapes": {layer["name"]: layer.get("shape_after") for layer in r.get("layers") or []},
        }
        rows.append(row)
        print(f"{name:12s} val {row['val_before']:.2f}→{row['val_after']:.2f} test {row['test_before']:.2f}→"
              f"{row['test_after']:.2f} params {row['params_ratio']:.1f}x flops {row['flops_ratio']:.2f}x "
              f"nz-flops {row['nonzero_flops_ratio']:.1f}x β {row['beta_final']} epochs {row['variational_epochs']} "
              f"{row['wall_s']:.0f}s", flush=True)
    tag = f"-{args.tag}" if args.tag else ""
    write_rows(f"autopilot-small-{args.method}{tag}.json", rows)


if __name__ == "__main__":
    main()

"""The default command on small, odd and awkward data sets nobody tuned for (scikit-learn's own, or generated).

    python benchmarks/autopilot_data.py                     # every case
    python benchmarks/autopilot_data.py --cases iris wine   # some
    python benchmarks/autopilot_data.py --list

Each case writes its splits to ``runs/autopilot-data/CASE.npz``, trains a dense MLP here on the training split only
(full-batch Adam, 1 torch thread, seed 0; the state dict in ``runs/autopilot-data/CASE.pt``), then runs the default
command ``python -m prunedrop compress CASE.pt --arch benchmarks.autopilot_data:CASE --data npz:CASE.npz -o
runs/autopilot-data/CASE`` (no recipe, no epochs; ``--loss mse`` for regression, as a user must say it) with
``OMP_NUM_THREADS=1``. A row: compression (non-zero parameters), validation and test before → after with the paired
standard error of the test change, wall time, the exit status and the run's last line where it stopped, and whether
the promise was kept: the test drop within the budget, or within one standard error of it, or the run said why not.
Results: ``benchmarks/results/autopilot-data.json`` (merged per case).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root (python benchmarks/<script>.py)

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "autopilot-data"
RESULT = ROOT / "benchmarks" / "results" / "autopilot-data.json"

Splits = dict[str, np.ndarray]


@dataclass
class Case:
    name: str
    make: Callable[[], Splits]   # x_train, y_train, x_val, y_val, x_test, y_test
    inputs: int
    outputs: int
    hidden: int = 64
    loss: str = "cross_entropy"
    steps: int = 500
    lr: float = 1e-2
    note: str = ""
    scale: float = 1.0   # the model's output is multiplied by this constant (a careful user's tiny targets)
    csv_names: list[str] | None = None  # written as csv:DIR (train/val/test.csv), labels as these names


class Scaled(nn.Sequential):
    """An MLP whose output is multiplied by a constant ``factor``."""

    def __init__(self, *layers: nn.Module, factor: float = 1.0) -> None:
        super().__init__(*layers)
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.factor


def mlp(inputs: int, outputs: int, hidden: int = 64, scale: float = 1.0) -> nn.Module:
    return Scaled(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                  nn.Linear(hidden, outputs), factor=scale)


def _split(x: np.ndarray, y: np.ndarray, fractions: tuple[float, float], seed: int = 0,
           stratify: bool = True) -> Splits:
    """train / val / test with ``fractions`` = (val, test) of the samples, stratified for class labels."""
    from sklearn.model_selection import train_test_split

    x = np.asarray(x, dtype=np.float32)
    strat = y if stratify else None
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=fractions[1], random_state=seed, stratify=strat)
    strat = y_rest if stratify else None
    val = fractions[0] / (1 - fractions[1])
    x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest, test_size=val, random_state=seed,
                                                      stratify=strat)
    return {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val, "x_test": x_test, "y_test": y_test}


def _sk(name: str):
    import sklearn.datasets as ds

    return getattr(ds, name)(return_X_y=True)


def iris() -> Splits:
    return _split(*_sk("load_iris"), (0.2, 0.2))


def wine() -> Splits:
    return _split(*_sk("load_wine"), (0.2, 0.2))


def breast_cancer() -> Splits:
    return _split(*_sk("load_breast_cancer"), (0.2, 0.2))


def linnerud() -> Splits:
    x, y = _sk("load_linnerud")
    return _split(x, y.astype(np.float32), (0.2, 0.2), stratify=False)


def diabetes() -> Splits:
    x, y = _sk("load_diabetes")
    return _split(x, y.astype(np.float32), (0.2, 0.2), stratify=False)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = _sk("load_digits")
    return x / 16.0, y


def digits_val20() -> Splits:
    """The digits with a validation split of 20 images: one image is 5 points, five budgets."""
    x, y = _digits()
    s = _split(x, y, (0.2, 0.2))
    s["x_val"], s["y_val"] = s["x_val"][:20], s["y_val"][:20]
    return s


def digits_value() -> Splits:
    """The digits, the digit's value (0 to 9) as a regression target."""
    x, y = _digits()
    return _split(x, y.astype(np.float32), (0.2, 0.2), stratify=False)


def cancer_radius() -> Splits:
    """The breast cancer set's mean radius (its first column) as an mse target, from the 27 columns that are not
    radius, perimeter or area, unscaled."""
    x, _ = _sk("load_breast_cancer")
    keep = [i for i in range(30) if i % 10 not in (0, 2, 3)]
    return _split(x[:, keep], x[:, 0].astype(np.float32), (0.2, 0.2), stratify=False)


def imbalance() -> Splits:
    """Two classes, 95/5, 3,000 samples, 20 features."""
    from sklearn.datasets import make_classification

    x, y = make_classification(3000, 20, n_informative=6, weights=[0.95, 0.05], class_sep=0.8, flip_y=0.0,
                               random_state=0)
    return _split(x, y, (0.2, 0.2))


def many_classes() -> Splits:
    """50 classes × 10 samples (6 train, 2 validation, 2 test each), 20 features."""
    from sklearn.datasets import make_classification

    x, y = make_classification(500, 20, n_informative=15, n_classes=50, n_clusters_per_class=1, class_sep=2.0,
                               weights=None, flip_y=0.0, random_state=0)
    order = np.argsort(y, kind="stable")
    x, y = x[order], y[order]
    # exactly 10 per class is not what make_classification promises: take what each class holds, 60/20/20
    return _split(x, y, (0.2, 0.2))


def sparse_labels() -> Splits:
    """The wine set with its classes named 0, 3 and 7 (a model with 8 outputs; 1, 2, 4, 5, 6 never occur)."""
    x, y = _sk("load_wine")
    return _split(x, np.array([0, 3, 7])[y], (0.2, 0.2))


def absent_class() -> Splits:
    """Four classes of blobs; class 3 is in the training and test data but not in validation."""
    from sklearn.datasets import make_blobs

    x, y = make_blobs(800, 10, centers=4, cluster_std=4.0, random_state=0)
    s = _split(x, y, (0.2, 0.2))
    keep = s["y_val"] != 3
    s["x_val"], s["y_val"] = s["x_val"][keep], s["y_val"][keep]
    return s


def huge_scale() -> Splits:
    """Features scaled by 1e6, and four constant columns (two at 0, two at 3e6)."""
    from sklearn.datasets import make_classification

    x, y = make_classification(1500, 16, n_informative=8, n_classes=3, class_sep=1.0, random_state=0)
    x = np.concatenate([x * 1e6, np.zeros((len(x), 2)), np.full((len(x), 2), 3e6)], axis=1)
    return _split(x, y, (0.2, 0.2))


def offset_target() -> Splits:
    """Regression, the target's mean 1e4 (std about 100)."""
    from sklearn.datasets import make_regression

    x, y = make_regression(1000, 10, n_informative=6, noise=5.0, random_state=0)
    return _split(x, (1e4 + y).astype(np.float32), (0.2, 0.2), stratify=False)


def tiny_target() -> Splits:
    """Regression, the target's scale 1e-4."""
    from sklearn.datasets import make_regression

    x, y = make_regression(1000, 10, n_informative=6, noise=5.0, random_state=0)
    return _split(x, (1e-4 * y / y.std()).astype(np.float32), (0.2, 0.2), stratify=False)


def perfect() -> Splits:
    """Well separated blobs: the dense model reads 100% on validation."""
    from sklearn.datasets import make_blobs

    x, y = make_blobs(1000, 10, centers=5, cluster_std=1.0, random_state=1)
    return _split(x, y, (0.2, 0.2))


def poor() -> Splits:
    """Three classes with a third of the labels drawn at random: a model near 60%."""
    from sklearn.datasets import make_classification

    x, y = make_classification(2000, 20, n_informative=5, n_classes=3, class_sep=0.7, flip_y=0.3, random_state=0)
    return _split(x, y, (0.2, 0.2))


CASES = [
    Case("iris", iris, 4, 3, note="150 samples, 30 validation (one = 3.3 points)"),
    Case("wine", wine, 13, 3, note="178 samples, features unscaled (proline ~1e3)"),
    Case("breast_cancer", breast_cancer, 30, 2, note="569 samples, binary, unscaled (0.001 to 4,000)"),
    Case("linnerud", linnerud, 3, 3, loss="mse", note="20 samples, 3 targets, 4 validation"),
    Case("diabetes", diabetes, 10, 1, loss="mse", note="442 samples, target mean 152"),
    Case("digits_val20", digits_val20, 64, 10, hidden=128, note="validation of 20 images (one = 5 points)"),
    Case("digits_value", digits_value, 64, 1, hidden=128, loss="mse", note="digits, the value 0-9 as an mse target"),
    Case("digits_value64", digits_value, 64, 1, hidden=64, loss="mse", note="the same, a 64-wide MLP"),
    Case("cancer_radius", cancer_radius, 21, 1, loss="mse", note="breast cancer's mean radius as an mse target"),
    Case("imbalance", imbalance, 20, 2, note="95/5, 3,000 samples"),
    Case("many_classes", many_classes, 20, 50, hidden=128, note="50 classes × 10 samples"),
    Case("sparse_labels", sparse_labels, 13, 8, note="wine, labels {0, 3, 7}, 8 outputs"),
    Case("absent_class", absent_class, 10, 4, note="class 3 absent from validation"),
    Case("huge_scale", huge_scale, 20, 3, note="features ×1e6, 4 constant columns"),
    Case("offset_target", offset_target, 10, 1, loss="mse", note="target mean 1e4"),
    Case("tiny_target", tiny_target, 10, 1, loss="mse", note="target scale 1e-4 (the output times 1e-4)", scale=1e-4),
    Case("iris_csv", iris, 4, 3, note="iris as csv:DIR, labels as names (--class-names sorted)",
         csv_names=["setosa", "versicolor", "virginica"]),
    Case("perfect", perfect, 10, 5, note="100% validation accuracy"),
    Case("poor", poor, 20, 3, note="30% random labels: a model near 60%"),
]
BY_NAME = {c.name: c for c in CASES}


def _factory(case: Case) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return mlp(case.inputs, case.outputs, case.hidden, case.scale)
    build.__name__ = case.name
    return build


for _case in CASES:  # the --arch factories: benchmarks.autopilot_data:iris, ...
    globals()[_case.name] = _factory(_case)


def train_dense(case: Case, s: Splits) -> nn.Module:
    """Full-batch Adam on the training split; the state with the best validation metric of every 10th step."""
    torch.manual_seed(0)
    model = mlp(case.inputs, case.outputs, case.hidden, case.scale)
    x = torch.as_tensor(s["x_train"], dtype=torch.float32)
    xv = torch.as_tensor(s["x_val"], dtype=torch.float32)
    if case.loss == "mse":
        y = torch.as_tensor(s["y_train"], dtype=torch.float32).reshape(len(x), -1)
        yv = torch.as_tensor(s["y_val"], dtype=torch.float32).reshape(len(xv), -1)
        with torch.no_grad():  # a careful user starts the output at the targets' mean and scale
            model[-1].bias.copy_(y.mean(0) / case.scale)
    else:
        y = torch.as_tensor(s["y_train"], dtype=torch.long)
        yv = torch.as_tensor(s["y_val"], dtype=torch.long)
    opt = torch.optim.Adam(model.parameters(), lr=case.lr)
    best, best_state = None, None
    for step in range(case.steps):
        out = model(x)
        loss = (nn.functional.mse_loss(out, y) if case.loss == "mse" else nn.functional.cross_entropy(out, y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 9:
            with torch.no_grad():
                ov = model(xv)
                score = (-float(nn.functional.mse_loss(ov, yv)) if case.loss == "mse"
                         else float((ov.argmax(1) == yv).float().mean()))
            if best is None or score > best:
                best, best_state = score, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.eval()


def run_case(case: Case, budget: float | None, tag: str) -> dict:
    WORK.mkdir(parents=True, exist_ok=True)
    data = WORK / f"{case.name}.npz"
    s = case.make()
    np.savez(data, **s)
    spec = f"npz:{data.relative_to(ROOT)}"
    if case.csv_names is not None:  # the same splits as csv:DIR, the labels as names
        folder = WORK / case.name
        folder.mkdir(exist_ok=True)
        for split in ("train", "val", "test"):
            x, y = s[f"x_{split}"], s[f"y_{split}"]
            header = ",".join([f"f{i}" for i in range(x.shape[1])] + ["label"])
            rows = [",".join([f"{v:.6g}" for v in row] + [case.csv_names[int(k)]]) for row, k in zip(x, y)]
            (folder / f"{split}.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
        spec = f"csv:{folder.relative_to(ROOT)}"
    weights = WORK / f"{case.name}.pt"
    t0 = time.perf_counter()
    torch.save(train_dense(case, s).state_dict(), weights)
    train_s = time.perf_counter() - t0
    out = WORK / f"{case.name}-{tag}"
    cmd = [sys.executable, "-m", "prunedrop", "compress", str(weights.relative_to(ROOT)), "--arch",
           f"benchmarks.autopilot_data:{case.name}", "--data", spec, "-o",
           str(out.relative_to(ROOT)), "--overwrite"]
    if case.loss == "mse":
        cmd += ["--loss", "mse"]
    if case.csv_names is not None:
        cmd += ["--class-names", "sorted"]
    if budget is not None:
        cmd += ["--max-drop", str(budget)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (WORK / f"{case.name}-{tag}.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    row: dict = {"case": case.name, "note": case.note, "loss": case.loss, "rc": proc.returncode,
                 "wall_s": round(wall, 1), "train_s": round(train_s, 1),
                 "sizes": {k: int(len(v)) for k, v in s.items() if k.startswith("y_")},
                 "command": " ".join(["prunedrop", *cmd[3:]])}
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    row["last_line"] = lines[-1][:400] if lines else ""
    report = out / "report.json"
    if proc.returncode in (0, 4) and report.exists():
        r = json.loads(report.read_text())
        m, t = r["metric"], r.get("test_metric") or {}
        row.update(params_ratio=r["params"]["ratio"], metric=m.get("name"),
                   val_before=m["before"], val_after=m["after"], val_se=m.get("delta_se"),
                   test_before=t.get("before"), test_after=t.get("after"), test_se=t.get("delta_se"),
                   budget=(r.get("autopilot") or {}).get("max_metric_drop", budget),
                   confidence=m.get("budget_confidence"), threshold=r.get("threshold"),
                   variational_epochs=r.get("variational_epochs"))
    return row


def verdict(row: dict, budget: float) -> str:
    if "params_ratio" not in row:
        return f"stopped (rc {row['rc']})"
    tb, ta, se = row["test_before"], row["test_after"], row["test_se"] or 0.0
    if row["loss"] == "mse":
        drop = 100.0 * (ta - tb) / tb if tb else float("inf")
        se = 100.0 * se / tb if tb else 0.0
    else:
        drop = tb - ta
    row["test_drop"] = drop
    if drop <= budget:
        return "kept"
    return "kept within 1 se" if drop <= budget + se else "MISSED"


def fmt(row: dict) -> str:
    if "params_ratio" not in row:
        return f"{row['case']:14s} rc {row['rc']} {row['wall_s']:.0f}s  {row['last_line']}"
    mse = row["loss"] == "mse"
    f = "{:.4g}" if mse else "{:.2f}"
    return (f"{row['case']:14s} {row['params_ratio']:7.2f}x val {f.format(row['val_before'])}→"
            f"{f.format(row['val_after'])} test {f.format(row['test_before'])}→{f.format(row['test_after'])} "
            f"(±{row['test_se'] or 0:.3g}) {row['wall_s']:.0f}s {row.get('verdict', '')}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="*", default=None)
    p.add_argument("--max-drop", type=float, default=None, help="--max-drop (default: none given, the default 1)")
    p.add_argument("--tag", default="default")
    p.add_argument("--list", action="store_true")
    args = p.parse_args(argv)
    if args.list:
        for c in CASES:
            print(f"{c.name:14s} {c.note}")
        return
    torch.set_num_threads(1)
    names = args.cases or [c.name for c in CASES]
    results = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    for name in names:
        row = run_case(BY_NAME[name], args.max_drop, args.tag)
        row["verdict"] = verdict(row, args.max_drop if args.max_drop is not None else 1.0)
        print(fmt(row), flush=True)
        results[f"{name}-{args.tag}"] = row
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Regression (``loss: mse``) from the command line, end to end: real regression models and data through
``prunedrop compress``, the metric and the report in its terms, and the one-line errors for targets that do not
fit the model or the loss."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from prunedrop.cli import cli
from prunedrop.testing import TinyMLP, fit

QUICK_MSE_RECIPE = """\
loss: mse
epochs: 3
batch_size: 32
eval_batch_size: 128
lr: 0.003
noise_lr: 0.3
finetune_epochs: 1
device: cpu
latency_runs: 0
plots: false
mc_samples: 0
max_metric_drop: 50
"""

ARCH_MODULE = "regarch_mlp"
DATA_MODULE = "regdata_hook"


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The user's folder, the current folder; the modules written into it are forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / f"{ARCH_MODULE}.py").write_text(
        "from prunedrop.testing import TinyMLP\n\n\ndef build(**kw):\n    return TinyMLP(**kw)\n")
    (tmp_path / "quick.yaml").write_text(QUICK_MSE_RECIPE)
    yield tmp_path
    for name in (ARCH_MODULE, DATA_MODULE):
        sys.modules.pop(name, None)


def _train(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, steps: int = 300) -> torch.nn.Module:
    torch.manual_seed(0)
    return fit(model, torch.from_numpy(x), torch.from_numpy(y), steps, loss="mse").eval()


def _mse(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    return float(np.mean((out.reshape(y.shape) - y) ** 2))


def _diabetes() -> dict[str, np.ndarray]:
    """scikit-learn's bundled diabetes data (442 patients, 10 features, disease progression after a year;
    no download), standardised with the training split's statistics, split 300 / 70 / 72."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    mean, std, y_mean, y_std = x[:300].mean(0), x[:300].std(0), y[:300].mean(), y[:300].std()
    x = ((x - mean) / std).astype(np.float32)
    y = ((y - y_mean) / y_std).astype(np.float32)
    return {"x_train": x[:300], "y_train": y[:300], "x_val": x[300:370], "y_val": y[300:370],
            "x_test": x[370:], "y_test": y[370:]}


def _compress(*args: str) -> object:
    return CliRunner().invoke(cli, ["compress", "model.pt", "--arch", f"{ARCH_MODULE}:build", *args])


def _onnx_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_npz_regression_end_to_end_on_diabetes(folder: Path) -> None:
    from prunedrop.storage import load_saved_model

    data = _diabetes()
    np.savez(folder / "data.npz", **data)
    kwargs = {"in_features": 10, "hidden": [32, 16], "num_classes": 1}
    model = _train(TinyMLP(10, (32, 16), 1), data["x_train"], data["y_train"], steps=50)  # more steps overfit
    torch.save(model.state_dict(), folder / "model.pt")
    val_mse = _mse(model, data["x_val"], data["y_val"])
    assert val_mse < 0.7  # the model has learnt something (the validation targets have variance 0.93)

    result = _compress("--arch-kwargs", json.dumps(kwargs), "--data", "npz:data.npz", "--recipe", "quick.yaml",
                       "-o", "out", "-q")
    assert result.exit_code == 0, result.output
    out = folder / "out"
    report = json.loads((out / "report.json").read_text())
    metric = report["metric"]
    assert metric["name"] == "mse" and metric["higher_is_better"] is False
    assert metric["before"] == pytest.approx(val_mse, rel=1e-4)  # the validation mse, as sklearn would compute it
    assert metric["after"] <= metric["before"] * 1.5 + 1e-9  # within the budget of 50% more error
    assert report["test_metric"]["before"] == pytest.approx(_mse(model, data["x_test"], data["y_test"]), rel=1e-4)
    assert "calibration" not in report  # ECE/NLL are classification measures
    assert report["params"]["after"] <= report["params"]["before"]
    assert "metric: mse (lower is better)" in result.output
    assert "metric: mse (lower is better)" in (out / "report.md").read_text()

    # parity, and the exported ONNX model reproduces the compressed torch model on the validation inputs
    compressed = load_saved_model(out)
    with torch.no_grad():
        expected = compressed(torch.from_numpy(data["x_val"])).numpy()
    got = _onnx_outputs(out / "model.onnx", data["x_val"])
    assert got.shape == (70, 1)
    scale = max(1.0, float(np.abs(expected).max()))
    assert report["parity_max_abs_diff"] is not None and report["parity_max_abs_diff"] <= 1e-4 * scale
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * scale)
    assert float(np.mean((got[:, 0] - data["y_val"]) ** 2)) == pytest.approx(metric["after"], rel=1e-3)
    # the change's paired standard error, recomputed from the two models' per-sample squared errors
    with torch.no_grad():
        before = (model(torch.from_numpy(data["x_val"]))[:, 0].numpy() - data["y_val"]) ** 2
    diff = (expected[:, 0] - data["y_val"]) ** 2 - before
    assert metric["delta_se"] == pytest.approx(float(diff.std(ddof=1)) / np.sqrt(70), rel=1e-3)
    # the confidence with which the change keeps the budget (50% more error): Φ((50 − % more error) / se in %)
    from statistics import NormalDist

    more = 100 * (metric["after"] - metric["before"]) / metric["before"]
    se_percent = 100 * metric["delta_se"] / metric["before"]
    assert metric["budget_confidence"] == pytest.approx(NormalDist().cdf((50 - more) / se_percent), rel=1e-6)
    assert report["test_metric"]["delta_se"] is not None and report["test_metric"]["delta_se"] >= 0



def test_a_regression_model_returning_one_value_per_sample_with_the_loss_option(folder: Path) -> None:
    """A model whose forward squeezes its one output to (batch,) was refused ("must return a (batch, classes)
    tensor"); ``--loss mse`` sets the loss without a recipe key (the recipe here has none)."""
    data = _diabetes()
    np.savez(folder / "data.npz", **data)
    (folder / "squeezed_reg.py").write_text(
        "from prunedrop.testing import TinyMLP\n\n\nclass Squeezed(TinyMLP):\n    def forward(self, x):\n"
        "        return super().forward(x).squeeze(-1)\n\n\ndef build():\n    return Squeezed(10, (32, 16), 1)\n")
    (folder / "noloss.yaml").write_text(QUICK_MSE_RECIPE.replace("loss: mse\n", ""))
    model = _train(TinyMLP(10, (32, 16), 1), data["x_train"], data["y_train"], steps=50)
    torch.save(model.state_dict(), folder / "model.pt")
    args = ["compress", "model.pt", "--arch", "squeezed_reg:build", "--data", "npz:data.npz", "--recipe",
            "noloss.yaml", "-o", "out", "-q"]
    try:
        refused = CliRunner().invoke(cli, args)
        assert refused.exit_code == 1 and "pass --loss mse" in refused.output, refused.output
        result = CliRunner().invoke(cli, [*args, "--loss", "mse"])
    finally:
        sys.modules.pop("squeezed_reg", None)
    assert result.exit_code == 0, result.output
    report = json.loads((folder / "out" / "report.json").read_text())
    assert report["recipe"]["loss"] == "mse" and report["metric"]["name"] == "mse"
    assert report["metric"]["before"] == pytest.approx(_mse(model, data["x_val"], data["y_val"]), rel=1e-4)
    assert report["metric"]["after"] <= report["metric"]["before"] * 1.5 + 1e-9
    got = _onnx_outputs(folder / "out" / "model.onnx", data["x_val"])
    assert got.shape == (70,)
    assert float(np.mean((got - data["y_val"]) ** 2)) == pytest.approx(report["metric"]["after"], rel=1e-3)


HOOK = '''\
import numpy as np
import torch
from torch.utils.data import TensorDataset


def _split(seed, n):
    x = np.random.default_rng(seed).uniform(-1, 1, size=(n, 3)).astype(np.float32)
    y = np.stack([np.sin(2 * x[:, 0]) + x[:, 1], x[:, 0] * x[:, 2]], axis=1)
    y = (y + 0.1 * np.random.default_rng(seed + 10).normal(size=y.shape)).astype(np.float32)  # measurement noise
    return x, y


def arrays():
    return _split(0, 400), _split(1, 100)


def load():
    (x, y), (xv, yv) = arrays()
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), TensorDataset(torch.from_numpy(xv),
                                                                                  torch.from_numpy(yv))
'''


def test_python_hook_with_two_regression_targets_end_to_end(folder: Path) -> None:
    """A nonlinear function of 3 inputs with 2 outputs, from a python: hook; mc_samples > 0 still gives no
    calibration report, since ECE/NLL do not apply to regression."""
    import importlib

    (folder / f"{DATA_MODULE}.py").write_text(HOOK)
    sys.path.insert(0, str(folder))
    try:
        hook = importlib.import_module(DATA_MODULE)
    finally:
        sys.path.remove(str(folder))
    (x, y), (xv, yv) = hook.arrays()
    sys.modules.pop(DATA_MODULE, None)  # prunedrop imports it again, from the current folder
    model = _train(TinyMLP(3, (32, 16), 2), x, y, steps=400)
    torch.save(model.state_dict(), folder / "model.pt")
    val_mse = _mse(model, xv, yv)
    assert val_mse < 0.1 * float(np.var(yv))  # far better than predicting the mean
    (folder / "quick.yaml").write_text(QUICK_MSE_RECIPE.replace("mc_samples: 0", "mc_samples: 2"))

    result = _compress("--arch-kwargs", '{"in_features": 3, "hidden": [32, 16], "num_classes": 2}',
                       "--data", f"python:{DATA_MODULE}:load", "--recipe", "quick.yaml", "-o", "out")
    assert result.exit_code == 0, result.output
    report = json.loads((folder / "out" / "report.json").read_text())
    assert report["metric"]["name"] == "mse"
    # the mean over every target value, not the per-sample sum over the two outputs
    assert report["metric"]["before"] == pytest.approx(val_mse, rel=1e-4)
    assert "calibration" not in report and "## Calibration" not in (folder / "out" / "report.md").read_text()
    got = _onnx_outputs(folder / "out" / "model.onnx", xv)
    assert got.shape == (100, 2)
    assert float(np.mean((got - yv) ** 2)) == pytest.approx(report["metric"]["after"], rel=1e-3)


# ------------------------------------------------------------------------------------------ one-line errors


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"" for p in sorted(folder.rglob("*"))
            if "__pycache__" not in p.parts}


def _tiny_model(folder: Path, outputs: int, features: int = 4) -> str:
    torch.manual_seed(0)
    torch.save(TinyMLP(features, (8,), outputs).state_dict(), folder / "model.pt")
    return json.dumps({"in_features": features, "hidden": [8], "num_classes": outputs})


def _targets(shape: tuple[int, ...], dtype: type = np.float32, seed: int = 0) -> np.ndarray:
    y = np.random.default_rng(seed).normal(size=shape).astype(dtype)
    return y


MISTAKES = {
    # name: (model outputs, y_train, y_val, recipe loss, words the one line must hold)
    "one-target-three-outputs": (3, _targets((40,)), _targets((10,)), "mse",
                                 ["3 value(s) per sample", "a single number", "(N, 3)", "last layer"]),
    "two-targets-one-output": (1, _targets((40, 2)), _targets((10, 2)), "mse",
                               ["1 value(s) per sample", "shape (2,)", "(N, 1) or (N,)", "last layer"]),
    "val-targets-wider-than-train": (2, _targets((40, 2)), _targets((10, 3)), "mse",
                                     ["val targets", "shape (3,)", "(N, 2)"]),
    "class-labels-with-mse": (3, np.arange(40) % 3, np.arange(10) % 3, "mse", ["int64", "loss: cross_entropy"]),
    "float-targets-with-cross-entropy": (3, _targets((40,)), _targets((10,)), "cross_entropy", ["loss: mse"]),
    "target-matrix-with-cross-entropy": (2, _targets((40, 2)), _targets((10, 2)), "cross_entropy",
                                         ["shape (40, 2)", "loss: mse"]),
}


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_npz_target_mistakes_are_one_line_errors_before_any_file(folder: Path, case: str) -> None:
    outputs, y, y_val, loss, needles = MISTAKES[case]
    x = np.random.default_rng(1).normal(size=(40, 4)).astype(np.float32)
    np.savez(folder / "data.npz", x_train=x, y_train=y, x_val=x[:10], y_val=y_val)
    kwargs = _tiny_model(folder, outputs)
    (folder / "quick.yaml").write_text(QUICK_MSE_RECIPE.replace("loss: mse", f"loss: {loss}"))
    before = _snapshot(folder)
    result = _compress("--arch-kwargs", kwargs, "--data", "npz:data.npz", "--recipe", "quick.yaml", "-o", "out")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    for needle in needles:
        assert needle in result.output, result.output
    assert _snapshot(folder) == before  # nothing written, no output folder


HOOK_TARGETS = '''\
import torch
from torch.utils.data import TensorDataset


def load():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g)
    return TensorDataset(x, torch.randn({shape}, generator=g)), TensorDataset(x[:10], torch.randn({val}, generator=g))
'''


@pytest.mark.parametrize(("loss", "outputs", "shape", "needles"), [
    ("mse", 1, "40, 3", ["1 value(s) per sample", "shape (3,)", "last layer"]),
    ("mse", 2, "40", ["2 value(s) per sample", "a single number", "(N, 2)"]),
    ("cross_entropy", 3, "40", ["torch.float32", "loss: mse"]),
])
def test_python_hook_target_mistakes_are_one_line_errors(folder: Path, loss: str, outputs: int, shape: str,
                                                         needles: list[str]) -> None:
    val = "10" + shape[2:]
    (folder / f"{DATA_MODULE}.py").write_text(HOOK_TARGETS.format(shape=shape, val=val))
    kwargs = _tiny_model(folder, outputs)
    (folder / "quick.yaml").write_text(QUICK_MSE_RECIPE.replace("loss: mse", f"loss: {loss}"))
    result = _compress("--arch-kwargs", kwargs, "--data", f"python:{DATA_MODULE}:load", "--recipe", "quick.yaml",
                       "-o", "out")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    for needle in needles:
        assert needle in result.output, result.output
    assert not (folder / "out").exists()


def test_a_regression_model_no_better_than_the_targets_mean_is_named() -> None:
    from prunedrop.data import DataBundle
    from prunedrop.metrics import TargetSpread, mean_note
    from prunedrop.pipeline import measure_before_files
    from prunedrop.recipes import Recipe

    spread = TargetSpread()
    y = torch.tensor([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0], [7.0, 70.0]])
    batches = [(None, y[:3]), (None, y[3:])]
    assert [b[1].tolist() for b in spread.through(batches)] == [y[:3].tolist(), y[3:].tolist()]
    assert spread.constant_error() == pytest.approx(float(y.var(dim=0, unbiased=False).mean()))
    assert mean_note(spread.constant_error() * 0.5, spread.constant_error()) is None
    assert "R² 0" in mean_note(spread.constant_error(), spread.constant_error())
    assert mean_note(1.0, None) is None and mean_note(1.0, 0.0) is None

    gen = np.random.default_rng(0)
    x = gen.normal(size=(240, 8)).astype(np.float32)
    target = (x @ gen.normal(size=(8, 2)) + 3.0).astype(np.float32)  # not centred: a model at zero is far off
    sets = [torch.utils.data.TensorDataset(torch.from_numpy(x[i::3]), torch.from_numpy(target[i::3]))
            for i in range(3)]
    data = DataBundle(name="toy", train=sets[0], val=sets[1], test=sets[2], input_shape=(8,), num_classes=None)
    recipe = Recipe(loss="mse")
    torch.manual_seed(0)
    untrained = TinyMLP(in_features=8, hidden=(16,), num_classes=2).eval()
    notes = measure_before_files(untrained, data, recipe).notes
    assert len(notes) == 1 and "no lower than always predicting the targets' mean" in notes[0]
    trained = _train(TinyMLP(in_features=8, hidden=(16,), num_classes=2), x, target)
    assert measure_before_files(trained, data, recipe).notes == []

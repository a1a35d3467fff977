"""The command line, end to end on tiny data, plus help texts and one-line errors for user mistakes."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from prunedrop import __version__
from prunedrop.cli import cli
from prunedrop.export import run_onnx
from prunedrop.storage import load_saved_model
from prunedrop.testing import fit, tiny_classification_data, write_tiny_project


def _make_project(folder: Path) -> None:
    write_tiny_project(folder)
    (folder / "bad.yaml").write_text("treshold: 2\n")
    (folder / "exclude-all.yaml").write_text("exclude: ['*']\n")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    _make_project(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished compress run, shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("finished")
    _make_project(folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        mp.chdir(folder)
        result = CliRunner().invoke(cli, _compress("-o", "out"))
    assert result.exit_code == 0, result.output
    (folder / "stdout.txt").write_text(result.output)
    return folder


def _compress(*extra: str) -> list[str]:
    return ["compress", "model.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz", "--recipe",
            "recipe.yaml", "-q", *extra]


def test_compress_end_to_end(finished: Path) -> None:
    project, output = finished, (finished / "stdout.txt").read_text()
    out = project / "out"
    for name in ("model.onnx", "model.pt", "architecture.json", "report.json", "report.md", "original.onnx"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    for dotted in ("params.before", "params.after", "params.ratio", "flops.before", "flops.after",
                   "onnx_bytes.before", "onnx_bytes.after", "metric.name", "metric.before", "metric.after",
                   "parity_max_abs_diff", "layers"):
        node = report
        for part in dotted.split("."):
            node = node[part]
    assert report["params"]["after"] < report["params"]["before"]
    assert report["onnx_bytes"]["after"] < report["onnx_bytes"]["before"]
    assert report["parity_max_abs_diff"] <= 1e-4
    assert [layer["name"] for layer in report["layers"]] == ["net.1", "net.3", "net.5"]
    # the terminal table and the Markdown report show the same numbers
    assert "parameters (non-zero)" in output and "net.3" in output
    assert "net.3" in (out / "report.md").read_text()
    # the slim model reloads without the original class and agrees with onnxruntime
    x, _ = tiny_classification_data(n=200, shape=(1, 4, 4), seed=1)
    reloaded = load_saved_model(out)
    np.testing.assert_allclose(run_onnx(out / "model.onnx", x[160:]), reloaded(x[160:]).detach().numpy(),
                               atol=1e-5)
    # no local paths in what the user ships
    for name in ("model.onnx", "report.json", "report.md", "architecture.json"):
        assert str(project).encode() not in (out / name).read_bytes(), name
    meta = {p.key: p.value for p in onnx.load(out / "model.onnx").metadata_props}
    assert meta["prunedrop.params_after"] == str(report["params"]["after"])


def test_export_rethresholds_without_retraining(finished: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = finished
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    runner = CliRunner()
    loose = runner.invoke(cli, ["export", "out", "--threshold", "8", "-o", "loose.onnx"])
    strict = runner.invoke(cli, ["export", "out", "--threshold", "1", "-o", "strict.onnx"])
    assert loose.exit_code == 0 and strict.exit_code == 0, loose.output + strict.output

    def kept(output: str) -> float:
        return float(output.split("kept ")[1].split("%")[0])

    assert kept(loose.output) > kept(strict.output)
    assert (project / "loose.onnx").stat().st_size > (project / "strict.onnx").stat().st_size


def test_parametrized_weights_are_folded_converted_and_exported(project: Path) -> None:
    """weight_norm and spectral_norm layers (torch.nn.utils.parametrizations) are folded into plain weights and
    converted; before, the first was left dense without a word and the second's vdot stopped the ONNX export of
    the original. `export` rebuilds the model from --arch and folds it the same way."""
    (project / "normarch.py").write_text(
        "import torch\nfrom prunedrop.testing import TinyMLP\n\n\ndef build():\n"
        "    model = TinyMLP(16, (24, 12), 3)\n"
        "    torch.nn.utils.parametrizations.weight_norm(model.net[1])\n"
        "    torch.nn.utils.parametrizations.spectral_norm(model.net[3])\n"
        "    return model\n")
    import normarch

    x, y = tiny_classification_data(n=200, shape=(1, 4, 4), seed=1)
    torch.manual_seed(0)
    torch.save(fit(normarch.build(), x[:160], y[:160], 100).state_dict(), project / "norm.pt")
    args = ["compress", "norm.pt", "--arch", "normarch:build", "--data", "npz:data.npz", "--recipe", "recipe.yaml",
            "-o", "out"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "folded 2 parametrized weight(s)" in result.output
    report = json.loads((project / "out" / "report.json").read_text())
    assert report["conversion"]["converted"] == ["net.1", "net.3", "net.5"]
    assert report["conversion"]["reparametrized"] == ["net.1.weight (weight_norm)", "net.3.weight (spectral_norm)"]
    assert report["params"]["after"] < report["params"]["before"]
    assert report["parity_max_abs_diff"] <= 1e-4
    again = CliRunner().invoke(cli, ["export", "out", "--threshold", "2", "-o", "again.onnx"])
    assert again.exit_code == 0, again.output
    assert (project / "again.onnx").is_file()


def test_report_and_recipes_commands(finished: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["report", str(finished / "out")])
    assert result.exit_code == 0 and "parameters (non-zero)" in result.output
    listing = CliRunner().invoke(cli, ["recipes", "--keys"])
    assert listing.exit_code == 0
    assert "recipes/sparse-vd.yaml" in listing.output and "threshold (default 3.0)" in listing.output


def test_overrides_reach_the_recipe(project: Path) -> None:
    result = CliRunner().invoke(cli, _compress("-o", "out", "--epochs", "1", "--finetune-epochs", "0",
                                               "--kl-weight", "0", "--seed", "3"))
    assert result.exit_code == 0, result.output
    report = json.loads((project / "out" / "report.json").read_text())
    assert report["recipe"]["epochs"] == 1 and report["recipe"]["seed"] == 3
    assert [h["phase"] for h in report["history"]] == ["variational"]


@pytest.mark.parametrize("command", [[], ["compress"], ["export"], ["report"], ["recipes"]])
def test_help_of_every_command(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["compress", "missing.pt", "--arch", "tinyarch:build", "-o", "out"], "missing.pt", 1),
        (_compress("-o", "out", "--data", "nosuch:thing"), "data spec", 1),
        (_compress("-o", "out", "--recipe", "bad.yaml"), "did you mean 'threshold'", 1),
        (_compress("-o", "out", "--arch", "tinyarch:nope"), "has no attribute 'nope'", 1),
        (_compress("-o", "out", "--device", "tpu"), "'device' = 'tpu'", 1),
        (_compress("-o", "out", "--resume"), "holds no checkpoint", 1),
        (_compress("-o", "out", "--epochs", "-1"), "Invalid value for '--epochs'", 2),
        (_compress(), "Missing option '-o'", 2),
        (["report", "nowhere"], "nowhere", 1),
        (_compress("-o", "out", "--recipe", "exclude-all.yaml"), "globs exclude", 1),
        (["export", "nowhere", "-o", "x.onnx"], "not a prunedrop run folder", 1),
    ],
)
def test_user_mistakes_are_one_line_errors(project: Path, args: list[str], message: str, code: int) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    if code == 1:
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (project / "out").exists(), "a failed run must leave no output folder behind"


def test_class_names_for_labels_that_are_not_names_are_said_to_be_unused(project: Path) -> None:
    result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz",
                                      "--recipe", "recipe.yaml", "--class-names", "sorted", "-o", "out"])
    assert result.exit_code == 0, result.output
    assert "note: --class-names (class_names) is not used: the labels of this data are class indices" in result.output


def test_inspect_reads_a_table_whose_labels_are_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """inspect reads one input for its shape; a CSV whose label column holds class names needs no numbering there
    (compress asks for --class-names)."""
    (tmp_path / "twofeatures.py").write_text("from torch import nn\n\n\ndef build():\n"
                                             "    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    from torch import nn
    torch.save(nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3)).state_dict(), tmp_path / "m.pt")
    rows = "".join(f"{i},{i % 5},{['cat', 'dog', 'owl'][i % 3]}\n" for i in range(30))
    (tmp_path / "t.csv").write_text("a,b,label\n" + rows)
    result = CliRunner().invoke(cli, ["inspect", "m.pt", "--arch", "twofeatures:build", "--data", "csv:t.csv"])
    assert result.exit_code == 0, result.output
    assert "input 2" in result.output
    refused = CliRunner().invoke(cli, ["compress", "m.pt", "--arch", "twofeatures:build", "--data", "csv:t.csv",
                                       "-o", "out"])
    assert refused.exit_code == 1 and "--class-names sorted" in refused.output, refused.output


def test_a_model_that_takes_two_inputs_is_told_to_be_wrapped(project: Path) -> None:
    (project / "twoinputs.py").write_text(
        "from prunedrop.testing import TinyMLP\n\n\nclass Masked(TinyMLP):\n"
        "    def forward(self, x, mask):\n        return super().forward(x) * mask\n\n\n"
        "def build():\n    return Masked(16, (24, 12), 3)\n")
    result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", "twoinputs:build", "--data", "npz:data.npz",
                                      "--recipe", "recipe.yaml", "-o", "out"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "missing 1 required positional argument: 'mask'" in result.output
    assert "feeds the model one input tensor: wrap it" in result.output
    assert not (project / "out").exists()


@pytest.mark.parametrize(("wrap", "needles"), [
    ("{'logits': out, 'hidden': out[:, :2]}",
     ["dict {logits: a tensor of shape (2, 3), hidden: a tensor of shape (2, 2)}", "model(x)['logits']"]),
    ("(out, out.sum())", ["a tuple of 2 (a tensor of shape (2, 3), a tensor of shape ())", "model(x)[0]"]),
    # (N, C, 1): a prediction per position to the shape check, which says to flatten it for one label per sample
    ("out[:, :, None]", ["the model returns (N, 3, 1)", "flatten the model's output to (N, 3)"]),
    # one value per sample (a regression or one-logit model's squeezed output) is one output; class labels 0-2
    # do not fit it
    ("out[:, 0]", ["labels go up to 2 but the model has 1 output"]),
])
def test_a_model_that_returns_no_logits_tensor_is_told_what_it_returned(project: Path, wrap: str,
                                                                        needles: list[str]) -> None:
    """A Hugging Face style model returns a dict (ModelOutput) or a tuple: the error names what came back and
    how to wrap the model (it said 'returned dict')."""
    module = f"outarch{abs(hash(wrap))}"  # one module per case: an imported module stays in sys.modules
    (project / f"{module}.py").write_text(
        "from prunedrop.testing import TinyMLP\n\n\nclass Wrapped(TinyMLP):\n"
        f"    def forward(self, x):\n        out = super().forward(x)\n        return {wrap}\n\n\n"
        "def build():\n    return Wrapped(16, (24, 12), 3)\n")
    result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", f"{module}:build", "--data", "npz:data.npz",
                                      "--recipe", "recipe.yaml", "-o", "out"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    for needle in needles:
        assert needle in result.output, result.output
    assert not (project / "out").exists()


def test_non_empty_output_folder_needs_overwrite(project: Path) -> None:
    (project / "out").mkdir()
    (project / "out" / "precious.txt").write_text("keep me")
    result = CliRunner().invoke(cli, _compress("-o", "out"))
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert (project / "out" / "precious.txt").read_text() == "keep me"
    assert CliRunner().invoke(cli, _compress("-o", "out", "--overwrite")).exit_code == 0


def test_labels_beyond_the_model_outputs(project: Path) -> None:
    x, y = tiny_classification_data(n=40, shape=(1, 4, 4), seed=1)
    y[0] = 7
    np.savez(project / "wide.npz", x_train=x.numpy(), y_train=y.numpy())
    result = CliRunner().invoke(cli, _compress("-o", "out", "--data", "npz:wide.npz"))
    assert result.exit_code == 1 and "3 outputs" in result.output, result.output


def test_input_shape_that_does_not_fit(project: Path) -> None:
    x = np.random.rand(30, 1, 5, 5).astype("float32")
    np.savez(project / "big.npz", x_train=x, y_train=np.zeros(30, dtype="int64"))
    result = CliRunner().invoke(cli, _compress("-o", "out", "--data", "npz:big.npz"))
    assert result.exit_code == 1 and "(1, 5, 5)" in result.output, result.output


def test_a_float64_model_is_told_to_be_saved_as_float32(project: Path) -> None:
    (project / "f64arch.py").write_text("from tinyarch import build as _build\n\n\n"
                                        "def build():\n    return _build().double()\n")
    torch.save({k: v.double() for k, v in torch.load(project / "model.pt").items()}, project / "model64.pt")
    args = _compress("-o", "out", "--arch", "f64arch:build")
    args[1] = "model64.pt"
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "the model's parameters are float64, the inputs float32" in result.output, \
        result.output
    assert "model.float()" in result.output and not (project / "out").exists()


def test_integer_image_inputs_are_told_to_be_given_as_floats(project: Path) -> None:
    """8-bit images from a python: function reached a float32 model as uint8; the advice was to save the model as
    float32, which it was."""
    (project / "u8data.py").write_text(
        "import torch\nfrom torch.utils.data import TensorDataset\n\n\ndef load():\n"
        "    x = torch.randint(0, 256, (20, 16), dtype=torch.uint8)\n"
        "    y = torch.randint(0, 3, (20,))\n    return TensorDataset(x, y), TensorDataset(x[:6], y[:6])\n")
    try:
        result = CliRunner().invoke(cli, _compress("-o", "out", "--data", "python:u8data:load"))
    finally:
        sys.modules.pop("u8data", None)
    assert result.exit_code == 1, result.output
    assert "the inputs are uint8 and the model's parameters float32: give float inputs" in result.output
    assert "model.float()" not in result.output and not (project / "out").exists()


def test_run_has_sweep_calibration_and_plots(finished: Path) -> None:
    out = finished / "out"
    report = json.loads((out / "report.json").read_text())
    points = report["sweep"]["points"]
    assert len(points) == 17 and report["sweep"]["chosen_threshold"] is None
    kept = [p["params"] for p in points]
    assert kept == sorted(kept), "a higher log α threshold keeps more"
    assert set(report["calibration"]) == {"original", "variational_mc", "compressed"}
    for key in ("kept_per_layer", "log_alpha", "sweep", "training"):
        png = out / report["plots"][key]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
        assert f"]({report['plots'][key]})" in (out / "report.md").read_text()
    # the quantized file, where one was written (here its layers run slower as int8, so they compute in float32
    # from int8-stored weights), is timed beside the other two
    written = {"quantized"} if report["quantization"]["file"] else set()
    assert {r["model"] for r in report["latency"]["results"]} == {"original", "compressed"} | written


def test_accuracy_budget_chooses_the_threshold(project: Path) -> None:
    (project / "budget.yaml").write_text((project / "recipe.yaml").read_text() + "max_metric_drop: 100.0\n")
    args = _compress("-o", "out")
    args[args.index("recipe.yaml")] = "budget.yaml"
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads((project / "out" / "report.json").read_text())
    points = report["sweep"]["points"]
    # a budget of 100 points admits every threshold: the one that keeps least, but keeps some weights, wins
    candidates = [p for p in points if p["kept_weights"] > 0]
    best = min(candidates, key=lambda p: (p["params"], p["threshold"]))
    assert report["threshold"] == report["sweep"]["chosen_threshold"] == best["threshold"]
    assert "chosen by the sweep" in result.output


def test_inspect_command(finished: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(finished)
    monkeypatch.syspath_prepend(str(finished))
    result = CliRunner().invoke(cli, ["inspect", "model.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz"])
    assert result.exit_code == 0, result.output
    assert "net.3" in result.output and "convert" in result.output
    result = CliRunner().invoke(cli, ["inspect", "model.pt", "--arch", "tinyarch:build", "--input-shape", "1,4,4",
                                      "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["summary"]["converted"] == ["net.1", "net.3", "net.5"]
    bad = CliRunner().invoke(cli, ["inspect", "model.pt", "--arch", "tinyarch:build", "--input-shape", "1,x"])
    assert bad.exit_code == 2 and "--input-shape" in bad.output


def test_report_compares_runs_and_rerenders(finished: Path) -> None:
    out = finished / "out"
    result = CliRunner().invoke(cli, ["report", str(out), str(out)])
    assert result.exit_code == 0 and "parameters ratio" in result.output
    (out / "report.md").unlink()
    (out / "plots" / "sweep.png").unlink()
    result = CliRunner().invoke(cli, ["report", str(out)])
    assert result.exit_code == 0
    assert (out / "report.md").is_file() and (out / "plots" / "sweep.png").is_file()


# --- data without a hook, models without a factory module ----------------------------------------------

IMAGE_ARCH = (
    "from prunedrop.testing import TinyMLP\n\n\n"
    "def build(hidden=(24, 12), num_classes=3):\n    return TinyMLP(16, tuple(hidden), num_classes)\n"
)
QUICK_IMAGE_RECIPE = """\
epochs: 1
batch_size: 8
eval_batch_size: 32
lr: 0.003
noise_lr: 0.3
kl_weight: 20.0
kl_warmup_epochs: 1
finetune_epochs: 0
device: cpu
latency_runs: 0
plots: false
mc_samples: 0
image_size: [4, 4]
image_channels: 1
normalize: custom
normalize_mean: [0.5]
normalize_std: [0.5]
"""


@pytest.fixture
def image_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """6x6 RGB PNGs in images/train and images/val (class = which third of the image is bright), read as 4x4
    grey; a TinyMLP built with hidden=[10] (so only --arch-kwargs makes the architecture fit) trained on them."""
    import torch
    from PIL import Image

    from prunedrop.data import load_data
    from prunedrop.recipes import Recipe

    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 6)):
        for c, name in enumerate(["circle", "square", "star"]):
            (tmp_path / "images" / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 60, size=(6, 6, 3), dtype=np.uint8)
                pixels[:, 2 * c:2 * c + 2] += 180
                Image.fromarray(pixels, "RGB").save(tmp_path / "images" / split / name / f"{i}.png")
    (tmp_path / "imgarch.py").write_text(IMAGE_ARCH)
    (tmp_path / "recipe.yaml").write_text(QUICK_IMAGE_RECIPE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    from prunedrop.testing import TinyMLP

    recipe = Recipe.from_dict(__import__("yaml").safe_load(QUICK_IMAGE_RECIPE))
    data = load_data("imagefolder:images", recipe=recipe)
    x = torch.stack([data.train[i][0] for i in range(len(data.train))])
    y = torch.tensor([data.train[i][1] for i in range(len(data.train))])
    torch.manual_seed(0)
    model = fit(TinyMLP(16, (10,), 3), x, y, 60)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    return tmp_path


def _compress_images(*extra: str) -> list[str]:
    return ["compress", "model.pt", "--arch", "imgarch:build", "--arch-kwargs", '{"hidden": [10]}',
            "--data", "imagefolder:images", "--recipe", "recipe.yaml", "-q", *extra]


def test_an_image_folder_read_with_another_channel_count_than_the_model_takes(image_project: Path) -> None:
    """The images are read as grey (image_channels: 1) and the CNN's first convolution takes RGB: the error said only
    "expected input[2, 1, 4, 4] to have 3 channels"; it now names the recipe key that fits."""
    import torch

    (image_project / "rgbarch.py").write_text(
        "from torch import nn\n\n\ndef build():\n    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), "
        "nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))\n")
    import rgbarch

    try:
        torch.save(rgbarch.build().state_dict(), image_project / "rgb.pt")
        result = CliRunner().invoke(cli, ["compress", "rgb.pt", "--arch", "rgbarch:build", "--data",
                                          "imagefolder:images", "--recipe", "recipe.yaml", "-q", "-o", "out"])
    finally:
        sys.modules.pop("rgbarch", None)
    assert result.exit_code == 1, result.output
    assert "the images are read with 1 channel(s) and the model takes 3: set the recipe key image_channels: 3" \
        in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (image_project / "out").exists()


def test_compress_an_image_folder_with_arch_kwargs(image_project: Path) -> None:
    result = CliRunner().invoke(cli, _compress_images("-o", "out"))
    assert result.exit_code == 0, result.output
    out = image_project / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["metric"]["name"] == "accuracy" and report["metric"]["before"] > 0.9
    assert report["parity_max_abs_diff"] <= 1e-4
    info = json.loads((out / "run.json").read_text())
    assert info["arch_kwargs"] == {"hidden": [10]} and info["recipe"]["image_size"] == [4, 4]
    assert report["source"]["arch_kwargs"] == {"hidden": [10]} and report["source"]["data"] == "imagefolder:images"
    x = np.stack([np.zeros((1, 4, 4), np.float32)])
    assert run_onnx(out / "model.onnx", x).shape == (1, 3)
    # export rebuilds the model with the recorded kwargs (without them the state dict would not fit)
    exported = CliRunner().invoke(cli, ["export", "out", "--threshold", "8", "-o", "again.onnx"])
    assert exported.exit_code == 0, exported.output
    assert (image_project / "again.onnx").is_file()
    # --resume must rebuild the same model: other kwargs are refused in one line
    args = _compress_images("-o", "out", "--resume")
    args[args.index('{"hidden": [10]}')] = '{"hidden": [11]}'
    resumed = CliRunner().invoke(cli, args)
    assert resumed.exit_code == 1 and "--arch-kwargs" in resumed.output, resumed.output
    assert len(resumed.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ("{hidden: [10]}", "not valid JSON"),
        ("[10]", "must be a JSON object"),
        ('{"depth": 2}', "rejected --arch-kwargs"),
    ],
)
def test_bad_arch_kwargs_on_the_command_line(image_project: Path, kwargs: str, message: str) -> None:
    args = _compress_images("-o", "out")
    args[args.index('{"hidden": [10]}')] = kwargs
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (image_project / "out").exists()


def test_arch_kwargs_without_arch(image_project: Path) -> None:
    result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch-kwargs", "{}", "--data", "imagefolder:images",
                                      "-o", "out"])
    assert result.exit_code == 1 and "holds a state dict" in result.output, result.output
    result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch-kwargs", '{"a": 1}', "--data",
                                      "imagefolder:images", "-o", "out"])
    assert result.exit_code == 1 and "--arch-kwargs needs --arch" in result.output, result.output


def test_compress_csv_regression(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from prunedrop.testing import TinyMLP

    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 4)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5, 0.0], np.float32)
    lines = ["f1,f2,f3,f4,price"] + [",".join(f"{v:.6f}" for v in (*row, t)) for row, t in zip(x, y)]
    (tmp_path / "houses.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "regarch.py").write_text("from prunedrop.testing import TinyMLP\n\n\ndef build(**kw):\n"
                                         "    return TinyMLP(**kw)\n")
    (tmp_path / "recipe.yaml").write_text(QUICK_IMAGE_RECIPE.split("image_size")[0]
                                          + "loss: mse\nlabel_column: price\n")
    torch.manual_seed(0)
    model = fit(TinyMLP(4, (8,), 1), torch.from_numpy(x), torch.from_numpy(y), 200, loss="mse")
    torch.save(model.state_dict(), tmp_path / "model.pt")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", "regarch:build", "--arch-kwargs",
                                      '{"in_features": 4, "hidden": [8], "num_classes": 1}', "--data",
                                      "csv:houses.csv", "--recipe", "recipe.yaml", "-q", "-o", "out"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["metric"]["name"] == "mse" and report["metric"]["before"] < 0.5


def test_help_names_the_new_specs_and_options() -> None:
    result = CliRunner().invoke(cli, ["compress", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for fragment in ("imagefolder:DIR", "csv:FILE", "hf:PATH", "--arch-kwargs", "timm:NAME",
                     "torchvision.models:resnet18"):
        assert fragment in text, fragment


def test_inspect_with_arch_kwargs_and_an_image_folder(image_project: Path) -> None:
    args = ["inspect", "model.pt", "--arch", "imgarch:build", "--data", "imagefolder:images", "--recipe",
            "recipe.yaml", "--json"]
    result = CliRunner().invoke(cli, [*args[:4], "--arch-kwargs", '{"hidden": [10]}', *args[4:]])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["summary"]["converted"] == ["net.1", "net.3"]
    without = CliRunner().invoke(cli, args)
    assert without.exit_code == 1 and "does not fit --arch" in without.output, without.output


def test_the_training_mode_check_leaves_the_model_as_it_was() -> None:
    # One forward in training mode before any file: it must not move BatchNorm statistics, a spectral norm's
    # vectors, the modes or the random state of the run to come.
    import torch
    from torch import nn

    from prunedrop.task import _check_training_output

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(),
                          nn.utils.spectral_norm(nn.Linear(4 * 6 * 6, 3))).eval()
    model[1].train()  # a caller's choice of modes is kept, module by module
    x = torch.randn(2, 1, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    _check_training_output(model, x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes and torch.equal(rng, torch.get_rng_state())


def _copy_of(finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the finished project to change and resume, as the working directory."""
    project = tmp_path / "copy"
    shutil.copytree(finished, project)
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.chdir(project)
    return project


def _written_before(project: Path, key: str, stored: object) -> Callable[[], None]:
    """Make the copied run's run.json one written before recipe key ``key`` existed (it stored ``stored``); returns
    the function that writes it so again (a resume rewrites it)."""
    info_path = project / "out" / "run.json"
    info = json.loads(info_path.read_text())
    assert info["recipe"].pop(key) is stored

    def write() -> None:
        info_path.write_text(json.dumps(info))

    write()
    return write


def test_resume_a_run_folder_written_before_a_recipe_key_existed(finished: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A run.json without a key added since (here ``strict``, at its default) resumes, instead of being refused as
    "a different recipe"; a recipe that sets that key otherwise is still refused."""
    project = _copy_of(finished, tmp_path, monkeypatch)
    write_again = _written_before(project, "strict", False)
    resumed = CliRunner().invoke(cli, _compress("-o", "out", "--resume"))
    assert resumed.exit_code == 0, resumed.output
    write_again()
    refused = CliRunner().invoke(cli, _compress("-o", "out", "--resume", "--strict"))
    assert refused.exit_code == 1 and "changed: strict" in refused.output, refused.output


def test_resume_a_run_folder_written_before_keep_unremovable(finished: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """``keep_unremovable`` came in true and changes which layers a structured run converts: a run.json without it
    trained them all, and resumes so (its checkpoint holds those layers), instead of with today's default."""
    project = _copy_of(finished, tmp_path, monkeypatch)
    _written_before(project, "keep_unremovable", True)
    resumed = CliRunner().invoke(cli, _compress("-o", "out", "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((project / "out" / "report.json").read_text())["recipe"]["keep_unremovable"] is False


def test_resume_a_run_folder_that_stored_the_old_finetuning_rate(finished: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``finetune_lr`` became null (the weights' rate): a run started at the old default (0.0003) resumes, with a
    recipe that leaves the key at today's default, at the rate it started with, instead of being refused; a fresh
    run at the default fine-tunes at a rate decided from the weights' ``lr``."""
    project = _copy_of(finished, tmp_path, monkeypatch)
    recipe = (project / "recipe.yaml").read_text()
    assert "finetune_lr: 0.001\n" in recipe
    (project / "recipe.yaml").write_text(recipe.replace("finetune_lr: 0.001\n", ""))
    info_path = project / "out" / "run.json"
    info = json.loads(info_path.read_text())
    info["recipe"]["finetune_lr"] = 0.0003
    info_path.write_text(json.dumps(info))
    resumed = CliRunner().invoke(cli, _compress("-o", "out", "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((project / "out" / "report.json").read_text())["recipe"]["finetune_lr"] == 0.0003
    fresh = CliRunner().invoke(cli, _compress("-o", "fresh"))
    assert fresh.exit_code == 0, fresh.output
    # a fixed β: no probe judges the fine-tuned model, so the gentle share (0.3) of the weights' lr 0.003
    assert json.loads((project / "fresh" / "report.json").read_text())["recipe"]["finetune_lr"] == \
        pytest.approx(0.0009)


def test_token_ids_from_an_npz_file_reach_an_embedding_model(project: Path) -> None:
    """The file readers give float32 inputs; a token classifier (nn.Embedding) stopped with "Expected tensor for
    argument #1 'indices' to have one of the following scalar types: Long, Int". Whole-number inputs that the model
    takes only as integers are now fed as int64 ids, in compress, export and inspect."""
    (project / "tokenarch.py").write_text(
        "from prunedrop.testing import TokenClassifier\n\n\ndef build():\n    return TokenClassifier(40, 8, 3)\n")
    import tokenarch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 20, (240, 7), generator=g)
    y = (ids[:, 0] % 3).long()
    torch.manual_seed(0)
    torch.save(fit(tokenarch.build(), ids[:200], y[:200], 200).state_dict(), project / "tokens.pt")
    np.savez(project / "tokens.npz", x_train=ids[:200].numpy(), y_train=y[:200].numpy(),
             x_test=ids[200:].numpy().astype(np.int32), y_test=y[200:].numpy())
    args = ["compress", "tokens.pt", "--arch", "tokenarch:build", "--data", "npz:tokens.npz", "--recipe",
            "recipe.yaml", "-o", "out"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "fed as int64 token ids" in result.output
    report = json.loads((project / "out" / "report.json").read_text())
    assert report["conversion"]["converted"] == ["embedding", "head"]
    assert report["parity_max_abs_diff"] <= 1e-4
    again = CliRunner().invoke(cli, ["export", "out", "--threshold", "2", "-o", "again.onnx"])
    assert again.exit_code == 0, again.output
    for given in (["--data", "npz:tokens.npz"], ["--input-shape", "7"]):
        shown = CliRunner().invoke(cli, ["inspect", "tokens.pt", "--arch", "tokenarch:build", *given])
        assert shown.exit_code == 0, shown.output
        assert "embedding" in shown.output


def test_fit_inputs_changes_only_what_the_model_cannot_take() -> None:
    from torch.utils.data import TensorDataset

    from prunedrop.data import DataBundle, fit_inputs
    from prunedrop.errors import PrunedropError
    from prunedrop.testing import TinyMLP, TokenClassifier

    def bundle(x: torch.Tensor) -> DataBundle:
        y = torch.zeros(len(x), dtype=torch.long)
        return DataBundle("npz:x.npz", TensorDataset(x[:8], y[:8]), TensorDataset(x[8:], y[8:]), None,
                          tuple(x.shape[1:]), 3)

    whole = torch.randint(0, 20, (12, 7)).float()
    tokens, said = fit_inputs(TokenClassifier(20), bundle(whole))
    assert said is not None and "0 … " in said
    assert tokens.train.tensors[0].dtype == tokens.val.tensors[0].dtype == torch.int64
    assert torch.equal(tokens.val.tensors[0], whole[8:].long())
    same, said = fit_inputs(TinyMLP(7, (5,), 3), bundle(whole))  # a float model keeps its float inputs
    assert said is None and same.train.tensors[0].dtype == torch.float32
    halves, said = fit_inputs(TokenClassifier(20), bundle(whole + 0.5))  # not ids: left for the model's error
    assert said is None and halves.train.tensors[0].dtype == torch.float32
    # ids past the vocabulary: said so, naming the id and the embedding, not that the model refuses float inputs
    with pytest.raises(PrunedropError, match=rf"inputs of npz:x.npz hold token id {int(whole.max())} but Embedding "
                                             "'embedding' has 10 rows"):
        fit_inputs(TokenClassifier(10), bundle(whole))
    # a padding of -1: said so, not that the model refuses float inputs; a float model's negative inputs stay
    padded = whole.clone()
    padded[:, -2:] = -1
    with pytest.raises(PrunedropError, match=r"some are negative \(down to -1\).*padding_idx"):
        fit_inputs(TokenClassifier(20), bundle(padded))
    kept_floats, said = fit_inputs(TinyMLP(7, (5,), 3), bundle(padded))
    assert said is None and kept_floats.train.tensors[0].dtype == torch.float32


def test_fit_inputs_lays_images_out_as_the_model_takes_them() -> None:
    """Image arrays saved without their channel axis, or channels last (NumPy, PIL, TensorFlow), stopped a CNN with
    "expected input[2, 8, 8, 1] to have 1 channels, but got 8 channels instead"."""
    from torch.utils.data import TensorDataset

    from prunedrop.data import DataBundle, fit_inputs
    from prunedrop.testing import TinyConv1d, TinyLeNet5, TinyMLP

    def bundle(x: torch.Tensor) -> DataBundle:
        y = torch.zeros(len(x), dtype=torch.long)
        return DataBundle("npz:x.npz", TensorDataset(x[:8], y[:8]), TensorDataset(x[8:], y[8:]), None,
                          tuple(x.shape[1:]), 3)

    images = torch.rand(12, 1, 14, 14)
    plain, said = fit_inputs(TinyLeNet5(), bundle(images[:, 0]))
    assert "a channel axis added" in said and "(1, 14, 14) per sample" in said
    assert plain.input_shape == (1, 14, 14) and torch.equal(plain.val.tensors[0], images[8:])
    last, said = fit_inputs(TinyLeNet5(in_channels=3), bundle(torch.rand(12, 14, 14, 3)))
    assert "channels moved first" in said and last.train.tensors[0].shape == (8, 3, 14, 14)
    assert last.example_batch(2).shape == (2, 3, 14, 14)
    signal, said = fit_inputs(TinyConv1d(), bundle(torch.rand(12, 9, 3)))  # a 1-D signal, channels last
    assert "(N, L, C) → (N, C, L)" in said and signal.input_shape == (3, 9)
    odd, said = fit_inputs(TinyConv1d(), bundle(torch.rand(12, 9, 5)))  # 5 values last: not read as channels
    assert said is None and odd.input_shape == (9, 5)
    rows, said = fit_inputs(TinyLeNet5(), bundle(images.flatten(1)))  # MNIST as CSV: one row of pixels per image
    assert "square grey image" in said and rows.input_shape == (1, 14, 14)
    assert torch.equal(rows.val.tensors[0], images[8:])
    flat, said = fit_inputs(TinyMLP(196, (5,), 3), bundle(images.flatten(1).view(12, 14, 14)))
    assert said is None  # a model that runs on the inputs as they are keeps them (TinyMLP flattens)
    assert flat.input_shape == (14, 14)


def test_an_overwrite_that_stops_early_leaves_no_earlier_results(finished: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """--overwrite deleted only the checkpoints: a fresh run that stopped at the original's ONNX export (an
    operator the exporter lacks) left the earlier run's report.json and model files beside its own run.json. Then
    it deleted them all and left its run.json; now the export is tried before any file (in a temporary folder),
    and the earlier run is left as it was, not one file changed."""
    project = tmp_path / "copy"
    shutil.copytree(finished, project)
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.chdir(project)
    (project / "bilarch.py").write_text(
        "import torch\nfrom torch import nn\nfrom tinyarch import build as _build\n\n\nclass B(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.inner = _build()\n"
        "    def forward(self, x):\n        out = self.inner(x)\n        # an operator neither exporter has\n"
        "        return torch.linalg.eig(out[:, :, None] * out[:, None, :]).eigenvalues.real\n\n\n"
        "def build():\n    return B()\n")
    torch.save({f"inner.{k}": v for k, v in torch.load(project / "model.pt").items()}, project / "bil.pt")
    assert (project / "out" / "report.json").is_file()
    before = {p: p.read_bytes() for p in (project / "out").rglob("*") if p.is_file()}
    result = CliRunner().invoke(cli, ["compress", "bil.pt", "--arch", "bilarch:build", "--data", "npz:data.npz",
                                      "--recipe", "recipe.yaml", "-q", "-o", "out", "--overwrite"])
    assert result.exit_code == 1 and "linalg_eig" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert {p: p.read_bytes() for p in (project / "out").rglob("*") if p.is_file()} == before


def test_a_model_only_the_dynamo_exporter_can_export_is_compressed(project: Path) -> None:
    """``nn.Bilinear`` has no TorchScript export ("operator aten::bilinear has no ONNX equivalent"): the run was
    refused before training; ``onnx_exporter: auto`` (the default) exports it with dynamo and says so."""
    import torch

    (project / "bilinear_only.py").write_text(
        "import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.a = nn.Linear(16, 8)\n        self.bl = nn.Bilinear(8, 16, 3)\n\n"
        "    def forward(self, x):\n        x = x.flatten(1)\n        return self.bl(torch.relu(self.a(x)), x)\n\n\ndef build():\n"
        "    return Net()\n")
    import bilinear_only

    from prunedrop.testing import fit

    data = np.load(project / "data.npz")
    torch.manual_seed(0)
    model = fit(bilinear_only.build(), torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"]), 200)
    torch.save(model.state_dict(), project / "bil.pt")
    args = ["compress", "bil.pt", "--arch", "bilinear_only:build", "--data", "npz:data.npz", "--recipe", "recipe.yaml",
            "--quantize", "none", "-o", "out"]
    try:
        result = CliRunner().invoke(cli, args)
    finally:
        sys.modules.pop("bilinear_only", None)
    assert result.exit_code == 0, result.output
    assert "the TorchScript exporter cannot export the model" in result.output
    assert "exported with the dynamo exporter" in result.output
    report = json.loads((project / "out" / "report.json").read_text())
    assert report["onnx_exporter"] == "dynamo" and report["parity_max_abs_diff"] <= 1e-4

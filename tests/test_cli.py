"""The command line, end to end on tiny data, plus help texts and one-line errors for user mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from prunedrop import __version__
from prunedrop.cli import cli
from prunedrop.export import run_onnx
from prunedrop.io import load_saved_model
from prunedrop.testing import tiny_classification_data, write_tiny_project


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
        (_compress("-o", "out", "--recipe", "exclude-all.yaml"), "excluded all of", 1),
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
    assert {r["model"] for r in report["latency"]["results"]} == {"original", "compressed"}


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

"""The stages of ``compress()`` (:mod:`prunedrop.stages`) and the run folder (:class:`prunedrop.runfolder.RunFolder`).

The stage results' ``to_dict()`` parts assemble report.json (and calling the public stages one by one writes the
report ``compress()`` writes); a run folder written by an earlier prunedrop (``tests/data/run-v1``, written by the
commit before the stages had modules of their own) still loads, re-exports, re-renders and resumes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from prunedrop import distributed, stages
from prunedrop.cli import cli
from prunedrop.data import load_data
from prunedrop.export import run_onnx
from prunedrop.pipeline import compress
from prunedrop.recipes import load_recipe
from prunedrop.report import load_report
from prunedrop.runfolder import IDENTITY_KEY, RunFolder, read_run_info
from prunedrop.stages.common import PARITY_SAMPLES, merge_parts
from prunedrop.storage import load_saved_model
from prunedrop.testing import TinyMLP, write_tiny_project
from prunedrop.train import evaluate, resolve_device

OLD_RUN = Path(__file__).parent / "data" / "run-v1"


def _untimed(obj: Any) -> Any:
    """``obj`` without the wall-clock entries (stage timings, seconds per epoch), which differ from run to run."""
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if k not in ("timings", "seconds")}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def _run_stages(model, data, recipe, out: Path) -> tuple[dict[str, Any], list[Any]]:
    """The stages called one by one through their public functions, as ``compress()`` calls them."""
    folder = RunFolder(out).create()
    torch.manual_seed(recipe.seed)
    device = resolve_device(recipe.device)
    model = model.cpu().eval()
    example = data.example_batch(min(PARITY_SAMPLES, recipe.eval_batch_size))
    run = {"resume": False, "progress": False, "log": lambda _: None}
    log = run["log"]
    baseline = stages.measure_original(model, data, recipe, folder, example, log)
    converted = stages.convert(model, recipe, example, log)
    trained = stages.finetune_variational(converted, data, recipe, device, folder, **run)
    recipe = stages.with_finetune_rate(recipe, data, log)
    selection = stages.select_threshold(converted, baseline, data, recipe, device, folder, example, **run)
    pruned = stages.prune_variational(converted.model, selection.threshold, recipe, log, pruned=selection.pruned,
                                      data=data)
    tuned = selection.finetuned or stages.finetune_pruned(pruned.result, data, recipe, device, example,
                                                          folder.masked_checkpoint, normalised=converted.normalised,
                                                          **run)
    slimmed = stages.slim_pruned(tuned.model, pruned.result.unit_masks, example, log, recipe.channel_multiple,
                                 slimmed=tuned.slimmed)
    evaluation = stages.evaluate_compressed(slimmed.model, baseline, selection, data, recipe)
    exported = stages.export_compressed(slimmed.model, baseline, evaluation, selection.threshold, pruned.bits, data,
                                        recipe, folder, example, log)
    results = [baseline, converted, trained, selection, pruned, tuned, slimmed, evaluation, exported]
    report = stages.assemble_report(slimmed.model, results, baseline=baseline, evaluation=evaluation,
                                    exported=exported, recipe=recipe, data=data, example=example, device=device,
                                    source=None)
    stages.write_run_report(report, selection, evaluation, recipe, folder, log)
    return report, results


def test_the_stage_results_assemble_the_report(tmp_path: Path) -> None:
    write_tiny_project(tmp_path)
    # per-unit noise (slim, kept units), a budget (the sweep's choice), MC calibration (two stages' parts)
    recipe = load_recipe(tmp_path / "recipe.yaml").replace(
        method="sbp", kl_weight=1.0, max_metric_drop=100.0, sweep_thresholds=[0.5, 1.0, 2.0, 4.0], mc_samples=2,
        plots=False, latency_runs=0)
    data = load_data(f"npz:{tmp_path / 'data.npz'}")

    def model() -> TinyMLP:
        m = TinyMLP(16, (24, 12), 3)
        m.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
        return m

    report, results = _run_stages(model(), data, recipe, tmp_path / "stages")
    written = json.loads((tmp_path / "stages" / "report.json").read_text())
    parts = [result.to_dict() for result in results]
    merged = json.loads(json.dumps(merge_parts(parts)))
    assert {"conversion", "sweep", "threshold", "calibration", "slim", "kept_unit_fraction_converted",
            "history", "variational_epochs", "test_metric", "sparse_initializers", "per_class"} <= set(merged)
    assert [r["label"] for r in merged["per_class"]["val"]] == [0, 1, 2]
    assert sum(r["samples"] for r in merged["per_class"]["val"]) == data.num_val
    for key, value in merged.items():
        assert key in written, key
        if key == "timings":
            assert set(value) == set(written["timings"])
        else:
            assert written[key] == value, key
    assert set(merged["calibration"]) == {"original", "variational_mc", "compressed"}
    phases = [h.get("phase") for h in written["history"]]
    assert phases[-recipe.finetune_epochs:] == ["masked"] * recipe.finetune_epochs  # variational, then masked
    assert written["world_size"] == distributed.world_size() and written["method"] == "sbp"
    # compress() is those calls: the same report, bar the wall clock
    logs: list[str] = []
    result = compress(model(), data, recipe, tmp_path / "whole", progress=False, log=logs.append)
    # SBP prunes by signal-to-noise ratio: the sweep's line says so, not "log α"
    assert any(line.startswith("threshold sweep: SNR ≤ ") for line in logs), logs
    whole = json.loads((tmp_path / "whole" / "report.json").read_text())
    assert _untimed(whole) == _untimed(written)
    assert set(whole["timings"]) == set(written["timings"])
    assert sorted(result.files) == ["architecture.json", "model.onnx", "model.pt", "original.onnx", "report.json",
                                    "report.md"]


def test_the_run_folder_names_every_file_a_run_writes(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    named = {folder.run_info, folder.variational_checkpoint, folder.masked_checkpoint, folder.original_onnx,
             folder.model_onnx, folder.quantized_onnx, folder.model_pt, folder.architecture_json,
             folder.report_json, folder.report_md, folder.probe_checkpoint(-0.5)}
    assert len(named) == 11 and all(p.parent == tmp_path for p in named)
    assert folder.probe_checkpoint(-0.5).name == "checkpoint-masked-t-0.5.pt"
    assert folder.plot("sweep") == "plots/sweep.png"
    # everything the old run wrote has a name here
    old = {p.name for p in (OLD_RUN / "run").iterdir()}
    assert old <= {p.name for p in named}


def test_an_old_run_folder_still_loads(old_run: Path) -> None:
    run = old_run / "run"
    info = read_run_info(run)
    assert info["arch"] == "tinyarch:build" and info["recipe"]["method"] == "sparse_vd" and IDENTITY_KEY in info
    report = load_report(run)
    # export: the old checkpoint loads into today's conversion and prunes as the run did
    exported = CliRunner().invoke(cli, ["export", "run", "-o", "again.onnx"])
    assert exported.exit_code == 0, exported.output
    assert f"kept {report['kept_fraction_converted']:.2%} of the converted weights" in exported.output
    assert (old_run / "again.onnx").is_file()
    # the saved model reloads and agrees with its ONNX file
    x = torch.from_numpy(np.load(old_run / "data.npz")["x_val"])
    np.testing.assert_allclose(run_onnx(run / "model.onnx", x), load_saved_model(run)(x).detach().numpy(),
                               atol=1e-5)
    # report: re-rendered from the old report.json
    rendered = CliRunner().invoke(cli, ["report", "run"])
    assert rendered.exit_code == 0, rendered.output
    assert "net.3" in rendered.output and "net.3" in (run / "report.md").read_text()
    # resume: the old run.json's identity and recipe are the inputs' (a finished run resumes to the same model)
    resumed = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz",
                                       "--recipe", "recipe.yaml", "-q", "-o", "run", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    again = load_report(run)
    assert again["params"] == report["params"] and again["threshold"] == report["threshold"]


@pytest.mark.parametrize(("bound", "notes", "why"), [
    ("target", ["c2: kept pruned channel(s) [3, 4]: they pass through the grouped convolution c2, which cannot "
                "lose single channels"], "slimming kept pruned units it could not remove: c2: kept pruned"),
    ("target", [], "training ended before it got there"),
    ("budget", ["c2: kept pruned channel(s) [3]: ..."], "the accuracy budget bound first"),
])
def test_a_missed_target_says_why(bound: str, notes: list[str], why: str) -> None:
    # A CNN of grouped convolutions under sbp with --target flops=4x: the autopilot read 7.14x and held β there
    # (bound by the target), slimming could remove no channel, and the line said "training ended before it got
    # there".
    from prunedrop.recipes import Recipe
    from prunedrop.stages.budget import target_outcome

    report = {"flops": {"before": 235_520, "nonzero_after": 70_784}, "autopilot": {"bound": bound},
              "slim": {"notes": notes, "removed": {"c2": [32, 32]}}}
    outcome = target_outcome(Recipe(method="sbp", target="flops=4x"), report)
    assert not outcome["reached"] and why in outcome["line"]
    assert "the closest model within the budget is 3.33x smaller" in outcome["line"]
    # with no budget there is none to be within
    alone = target_outcome(Recipe(method="sbp", target="flops=4x", max_metric_drop=None), report)
    assert "missed: the model is 3.33x smaller" in alone["line"] and "budget" not in alone["line"].split(";")[0]
    # a bytes target smaller than what the graph takes besides the parameters (a small transformer's 54 KB of shape
    # constants against its 72 KB of weights) says so, instead of blaming the training
    files = {"onnx_bytes": {"before": 125_638, "after": 67_891}, "params": {"total_before": 17_962},
             "autopilot": {"bound": "target"}}
    graph = target_outcome(Recipe(target="bytes=8x", max_metric_drop=None), files)["line"]
    assert "the file's graph alone, about 53,790 bytes besides the parameters, is more than the 15,705 bytes" in graph
    assert "training ended" in target_outcome(Recipe(target="bytes=2x", max_metric_drop=None), files)["line"]


def test_the_finetuning_rate_is_decided_by_where_the_budget_is_judged() -> None:
    """A null ``finetune_lr`` becomes the weights' ``lr`` where the budget is judged after the fine-tuning (validation
    data that resolves it), and 0.3 of it elsewhere; logged where a fine-tuning follows. A set rate stays."""
    from types import SimpleNamespace

    from prunedrop.recipes import Recipe

    said: list[str] = []
    null = Recipe(lr=2e-3, finetune_epochs=2)  # automatic: budget 1 point
    fine, coarse = SimpleNamespace(num_val=1000, num_train=100), SimpleNamespace(num_val=10, num_train=100)
    assert stages.with_finetune_rate(null, fine, said.append).finetune_lr == pytest.approx(2e-3)
    assert said == ["noise-free fine-tuning at learning rate 0.002 (the weights' learning rate: the budget is judged "
                    "after it)"]
    assert stages.with_finetune_rate(null, coarse, said.append).finetune_lr == pytest.approx(6e-4)
    assert said[-1] == ("noise-free fine-tuning at learning rate 0.0006 (the weights' learning rate × 0.3: no probe "
                        "judges the fine-tuned model against the budget)")
    fixed_beta = null.replace(kl_weight=1.0)  # no probes: the threshold is judged before the fine-tuning
    assert stages.with_finetune_rate(fixed_beta, fine, said.append).finetune_lr == pytest.approx(6e-4)
    target_only = Recipe(lr=2e-3, finetune_epochs=2, max_metric_drop=None, target="params=4x")  # no budget
    assert stages.with_finetune_rate(target_only, fine, said.append).finetune_lr == pytest.approx(6e-4)
    assert stages.with_finetune_rate(null.replace(finetune_lr=1e-4), fine, said.append).finetune_lr == 1e-4
    assert stages.with_finetune_rate(Recipe(lr=2e-3, finetune_epochs=0), fine, said.append).finetune_lr \
        == pytest.approx(2e-3)
    assert len(said) == 4  # no line for a set rate, nor where nothing is fine-tuned


@pytest.mark.parametrize("method", ["sbp", "sparse_vd"])
def test_the_default_sweep_grid_holds_only_thresholds_the_method_accepts(tmp_path: Path, method: str) -> None:
    write_tiny_project(tmp_path)
    recipe = load_recipe(tmp_path / "recipe.yaml").replace(method=method, kl_weight=1.0, max_metric_drop=100.0,
                                                           sweep_thresholds=None, threshold=None, plots=False)
    data = load_data(f"npz:{tmp_path / 'data.npz'}")
    model = TinyMLP(16, (24, 12), 3).eval()
    folder = RunFolder(tmp_path / "out").create()
    example = data.example_batch(8)
    run = {"resume": False, "progress": False, "log": lambda _: None}
    baseline = stages.measure_original(model, data, recipe, folder, example, run["log"])
    converted = stages.convert(model, recipe, example, run["log"])
    stages.finetune_variational(converted, data, recipe, resolve_device("cpu"), folder, **run)
    selection = stages.select_threshold(converted, baseline, data, recipe, resolve_device("cpu"), folder, example,
                                        **run)
    swept = sorted(p.threshold for p in selection.points)
    # a signal-to-noise ratio is never negative: SNR ≤ 0 or below prunes nothing, and a recipe may not ask for it
    assert swept[0] == (0.5 if method == "sbp" else -2.0) and swept[-1] == 6.0, swept
    assert selection.threshold > 0 or method == "sparse_vd"


@pytest.mark.parametrize("kl_weight", [30.0, None])
def test_a_run_that_prunes_nothing_says_why_and_what_would_change_it(kl_weight: float | None) -> None:
    """A fixed β of 30 under group VD pruned no unit of a digits CNN in 60 epochs, and the run exported the original
    model, 0.98x the size, without a word."""
    from prunedrop.convert import to_variational
    from prunedrop.recipes import Recipe
    from prunedrop.stages import prune_variational
    from prunedrop.testing import TinyMLP

    recipe = Recipe(method="sbp", kl_weight=kl_weight, max_metric_drop=1.0, quantize="none")
    logs: list[str] = []
    variational = to_variational(TinyMLP(), recipe)  # fresh noise: every unit's SNR is far above any threshold
    pruned = prune_variational(variational, recipe.threshold, recipe, logs.append)
    assert pruned.result.kept_fraction == 1.0
    notes = [line for line in logs if line.startswith("note: nothing was pruned")]
    assert len(notes) == 1
    assert ("β fixed at 30" in notes[0] and "--kl-weight" in notes[0]) if kl_weight else "--max-drop" in notes[0]


def test_the_budget_line_advises_a_confidence_where_the_budget_holds_with_little() -> None:
    """On 300 validation images three digits models within the budget at 50-76% confidence lost 2.2-3.1 points on
    the test images, and within 1.2 points with --confidence 0.9: a low confidence says so."""
    from prunedrop.recipes import Recipe
    from prunedrop.stages.reporting import budget_line

    recipe = Recipe(max_metric_drop=1.0)
    assert "--confidence 0.9" in budget_line(recipe, 95.67, 95.67, 1.4, 0.76)
    assert "--confidence" not in budget_line(recipe, 95.67, 96.0, 0.5, 0.99)
    asked = budget_line(Recipe(max_metric_drop=1.0, budget_confidence=0.9), 95.67, 96.0, 0.5, 0.99)
    assert asked.endswith("(asked: 90%)")


class _OddWidths(torch.nn.Module):
    """Convolutions and a depthwise one whose pruned widths (16 → 11, 24 → 13) are off a multiple of 8."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.b = torch.nn.Conv2d(16, 24, 1)
        self.dw = torch.nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.head = torch.nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.dw(torch.relu(self.b(torch.relu(self.a(x))))))
        return self.head(torch.nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))


@torch.no_grad()
def _odd_pruned() -> tuple[torch.nn.Module, dict[str, torch.Tensor], torch.Tensor]:
    torch.manual_seed(0)
    model, masks = _OddWidths().eval(), {}
    for name, pruned in (("a", [0, 3, 5, 9, 12]), ("dw", list(range(0, 24, 2))[:11])):
        layer = getattr(model, name)
        masks[name] = torch.ones(layer.out_channels, dtype=torch.bool)
        masks[name][pruned] = False
        layer.weight[pruned] = 0
        layer.bias[pruned] = 0
    return model, masks, torch.randn(4, 1, 6, 6)


@pytest.mark.parametrize(("rounded_ms", "chosen"), [(0.5, 8), (0.95, 1), (2.0, 1)])
def test_measured_widths_keep_the_rounded_model_only_where_it_runs_faster(rounded_ms: float, chosen: int) -> None:
    """``channel_multiple: null``: widths left off a multiple of 8 are rounded up (pruned channels kept as exact zeros)
    only when that model is at least 10% faster at the larger batch; the function is the same either way."""
    from prunedrop.stages.slimming import remove_pruned_units

    model, masks, x = _odd_pruned()
    calls, lines = [], []

    def timer(plain, rounded, example):
        calls.append((plain.a.out_channels, rounded.a.out_channels))
        return {1: (1.0, 1.0), 16: (1.0, rounded_ms)}

    result = remove_pruned_units(model, masks, x, lines.append, None, timer=timer)
    assert calls == [(11, 16)]
    widths = (result.model.a.out_channels, result.model.dw.out_channels)
    assert widths == ((16, 16) if chosen == 8 else (11, 13))
    assert result.widths["multiple"] == chosen and result.widths["odd_convolutions"] == ["a", "b", "dw"]
    assert result.widths["ms"]["16"] == {"as_pruned": 1.0, "rounded": rounded_ms}
    assert any(line.startswith("widths: ") for line in lines), lines
    with torch.no_grad():
        assert torch.allclose(result.model(x), model(x), atol=1e-5)


def test_measured_widths_time_nothing_where_no_width_is_odd_and_survive_a_failed_timing() -> None:
    from prunedrop.stages.slimming import remove_pruned_units

    def refuse(*args):
        raise RuntimeError("onnxruntime cannot load this")

    model, masks, x = _odd_pruned()
    masks["a"][:] = True  # a keeps 16, and dw's 13 are the only odd ones
    masks["a"][[1, 2, 4, 6, 7, 8, 10, 11]] = False
    with torch.no_grad():
        model.a.weight[~masks["a"]] = 0
        model.a.bias[~masks["a"]] = 0
    lines: list[str] = []
    failed = remove_pruned_units(model, masks, x, lines.append, None, timer=refuse)
    assert failed.widths["multiple"] == 1 and "RuntimeError" in failed.widths["error"]
    assert failed.model.a.out_channels == 8 and any("failed (RuntimeError" in line for line in lines)
    masks["dw"][:] = True
    masks["dw"][list(range(16))] = False
    with torch.no_grad():
        model.dw.weight[:16] = 0
        model.dw.bias[:16] = 0
    even = remove_pruned_units(model, masks, x, lines.append, None, timer=refuse)  # 8 and 8: nothing to time
    assert even.widths is None and (even.model.a.out_channels, even.model.dw.out_channels) == (8, 8)


def test_measured_widths_are_timed_with_onnxruntime_and_only_where_the_recipe_leaves_them() -> None:
    from prunedrop.recipes import Recipe
    from prunedrop.slim import slim
    from prunedrop.stages.slimming import WIDTH_BATCHES, slim_multiple, time_widths

    model, masks, x = _odd_pruned()
    plain, rounded = slim(model, masks, x).model, slim(model, masks, x, channel_multiple=8).model
    times = time_widths(plain, rounded, x)
    assert sorted(times) == list(WIDTH_BATCHES) and all(a > 0 and b > 0 for a, b in times.values())
    assert slim_multiple(Recipe()) is None and slim_multiple(Recipe(channel_multiple=4)) == 4
    assert slim_multiple(Recipe(method="sbp", target="flops=4x")) == 1  # a FLOPs target counts the exported widths
    assert slim_multiple(Recipe(method="sbp", target="bytes=4x")) == 1  # and rounding adds bytes
    # latency_runs: 0 times nothing, as the quantizer's speed check does not: every pruned channel goes
    assert slim_multiple(Recipe(method="sbp", latency_runs=0)) == 1
    assert slim_multiple(Recipe(method="sbp", latency_runs=0, channel_multiple=8)) == 8


def test_label_counts_count_single_labels_across_batches_and_leave_other_tasks_alone() -> None:
    from prunedrop.metrics import LabelCounts

    counts = LabelCounts("cross_entropy")
    batches = [(torch.zeros(3, 2), torch.tensor([0, 0, 1])), (torch.zeros(3, 2), torch.tensor([4, -100, 0]))]
    assert [y.tolist() for _, y in counts.through(batches)] == [[0, 0, 1], [4, -100, 0]]  # passed through
    assert counts.counts.tolist() == [3, 1, 0, 0, 1]
    per_position = LabelCounts("cross_entropy")
    list(per_position.through([(None, torch.tensor([[2, 2], [1, -100]]))]))
    assert per_position.counts.tolist() == [0, 1, 2]
    binary = LabelCounts("binary_cross_entropy")  # a one-logit classifier's 0/1 floats
    list(binary.through([(None, torch.tensor([[1.0], [0.0], [1.0]]))]))
    assert binary.counts.tolist() == [1, 2] and binary.labels.tolist() == [1, 0, 1]
    assert counts.labels is None and per_position.labels is None  # a sample without its label; labels per position
    tags = LabelCounts("binary_cross_entropy")  # a multi-label model's rows: no most frequent label
    list(tags.through([(None, torch.tensor([[1.0, 0.0], [1.0, 1.0]]))]))
    assert not tags.usable and tags.counts is None
    assert not LabelCounts("mse").usable


@pytest.mark.parametrize(("metric", "warned"), [(9.0, True), (13.0, True), (19.0, True), (21.0, False), (97.0, False)])
def test_a_classifier_no_better_than_its_most_frequent_label_is_named(metric: float, warned: bool) -> None:
    from prunedrop.metrics import chance_note

    counts = torch.tensor([13, 11, 10, 10, 10, 10, 9, 9, 9, 9])  # 100 labels, the most frequent 13%: 2 SE ≈ 6.7
    note = chance_note(metric, counts)
    assert (note is not None) == warned
    if warned:
        assert "no better than always predicting its most frequent label (0: 13%" in note
    assert chance_note(50.0, None) is None and chance_note(50.0, torch.tensor([1])) is None


def test_the_classes_averaged_tell_a_rare_class_learnt_from_one_label_always_predicted() -> None:
    from prunedrop.metrics import chance_note

    labels = torch.cat([torch.zeros(295, dtype=torch.long), torch.ones(5, dtype=torch.long)])  # 1.7% positives
    counts = torch.bincount(labels)
    learnt = torch.full((300,), 100.0)
    learnt[0] = 0.0  # every positive found, one false alarm: 99.67%, within 2 SE of predicting 0 always (98.33%)
    assert chance_note(99.67, counts) is not None  # the plain accuracy against the frequent label's share cannot tell
    assert chance_note(99.67, counts, labels=labels, scores=learnt) is None
    constant = (labels == 0).double() * 100.0  # always 0: 98.33% accurate, 50% over the two classes
    note = chance_note(98.33, counts, labels=labels, scores=constant)
    assert note is not None and "averages 50% over its 2 classes" in note
    guesses = (torch.arange(300) % 2 == labels).double() * 100.0
    assert chance_note(50.0, counts, labels=labels, scores=guesses) is not None
    assert chance_note(100.0, torch.tensor([0, 9]), labels=torch.ones(9, dtype=torch.long),
                       scores=torch.full((9,), 100.0)) is None  # one class only: nothing to tell


def test_an_untrained_model_is_named_in_the_log_the_report_and_the_terminal(tmp_path: Path) -> None:
    from prunedrop.pipeline import measure_before_files
    from prunedrop.report.render import format_markdown, format_table
    from prunedrop.storage import load_model

    data = load_data("digits")
    recipe = load_recipe("recipes/digits-quick.yaml")
    trained = load_model("examples/digits_mlp.pt", arch="examples.models:digits_mlp")
    assert measure_before_files(trained, data, recipe).notes == []
    untrained = load_model("examples/digits_mlp.pt", arch="examples.models:digits_mlp")
    with torch.no_grad():
        for p in untrained.parameters():
            p.zero_()  # every output equal: the first class for every sample
    measured = measure_before_files(untrained, data, recipe)
    assert len(measured.notes) == 1 and "was it trained" in measured.notes[0]
    lines: list[str] = []
    baseline = stages.measure_original(untrained, data, recipe, RunFolder(tmp_path / "run").create(),
                                       data.example_batch(8), lines.append, measured=measured)
    assert f"warning: {measured.notes[0]}" in lines
    assert baseline.to_dict()["original_notes"] == measured.notes
    report = {**load_report(OLD_RUN / "run"), "original_notes": measured.notes}
    assert f"warning: {measured.notes[0]}" in format_table(report)
    assert f"warning: {measured.notes[0]}" in format_markdown(report)
    assert "warning" not in format_table(load_report(OLD_RUN / "run"))


def test_the_original_is_exported_once_before_any_file_and_moved_in(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """measure_before_files exports the original to a temporary folder and checks it in onnxruntime (a failure was
    found only after run.json); measure_original moves that file in as original.onnx instead of exporting again."""
    from prunedrop.stages import baseline as baseline_stage

    write_tiny_project(tmp_path)
    recipe = load_recipe(tmp_path / "recipe.yaml")
    data = load_data(f"npz:{tmp_path / 'data.npz'}")
    model = TinyMLP(16, (24, 12), 3).eval()
    exports: list[Path] = []
    real = baseline_stage.export_onnx

    def export(*args, **kwargs):
        exports.append(Path(args[2]))
        return real(*args, **kwargs)

    monkeypatch.setattr(baseline_stage, "export_onnx", export)
    measured = baseline_stage.measure_before_files(model, data, recipe)
    scratch = measured.onnx.path
    assert scratch.is_file() and scratch.name == "original.onnx" and not (tmp_path / "out").exists()
    folder = RunFolder(tmp_path / "out").create()
    example = data.example_batch(min(PARITY_SAMPLES, recipe.eval_batch_size))
    result = stages.measure_original(model, data, recipe, folder, example, lambda _: None, measured=measured)
    assert exports == [scratch] and not scratch.parent.exists()
    assert result.onnx.path == folder.original_onnx and folder.original_onnx.stat().st_size == result.onnx.num_bytes
    assert torch.allclose(torch.as_tensor(run_onnx(folder.original_onnx, example)), model(example), atol=1e-5)
    again = stages.measure_original(model, data, recipe, RunFolder(tmp_path / "again").create(), example,
                                    lambda _: None, measured=measured)  # the file is moved: exported there anew
    assert again.onnx.path == tmp_path / "again" / "original.onnx" and again.onnx.path.is_file()
    assert len(exports) == 2 and not exports[-1].parent.exists()  # exported (checked, moved in) as before the folder


def test_a_compress_that_stops_before_the_original_is_moved_in_leaves_no_temporary_folder(tmp_path: Path) -> None:
    """measure_before_files' temporary folder is deleted when compress() fails before measure_original moves its
    file in (here the output is a file, so the folder cannot be made), though the caller still holds the Measured;
    a later compress() with it exports the original again."""
    from prunedrop.pipeline import measure_before_files

    write_tiny_project(tmp_path)
    recipe = load_recipe(tmp_path / "recipe.yaml")
    data = load_data(f"npz:{tmp_path / 'data.npz'}")
    model = TinyMLP(16, (24, 12), 3).eval()
    measured = measure_before_files(model, data, recipe)
    scratch = measured.onnx.path.parent
    assert scratch.is_dir()
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(OSError):
        compress(model, data, recipe, blocked, measured=measured, log=lambda _: None, progress=False)
    assert not scratch.exists() and measured.onnx is None


def test_a_full_temporary_folder_during_the_original_export_is_named_as_such(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The original is exported to a temporary folder before any file: a disk full there is no output folder the
    user could choose ("choose an output folder you can write to" was the advice); it names the folder and TMPDIR."""
    import errno
    import tempfile

    from prunedrop.errors import PrunedropError
    from prunedrop.export import trace
    from prunedrop.stages import baseline as baseline_stage

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trace, "atomic_write_bytes", full)
    write_tiny_project(tmp_path)
    recipe = load_recipe(tmp_path / "recipe.yaml")
    data = load_data(f"npz:{tmp_path / 'data.npz'}")
    scratch = set(Path(tempfile.gettempdir()).glob("prunedrop-original-*"))  # other runs' on this machine
    with pytest.raises(PrunedropError) as excinfo:
        baseline_stage.measure_before_files(TinyMLP(16, (24, 12), 3).eval(), data, recipe)
    message = excinfo.value.message
    assert f"temporary folder {tempfile.gettempdir()}: No space left on device" in message and "TMPDIR" in message
    assert "choose an output folder" not in message
    assert set(Path(tempfile.gettempdir()).glob("prunedrop-original-*")) <= scratch  # none left behind


def test_a_run_that_prunes_nothing_skips_the_noise_free_fine_tuning(tmp_path: Path) -> None:
    """A short SBP run on the digits example pruned no unit and then trained 39 noise-free epochs of a model that
    could not change size; there is nothing for the fine-tuning to win back."""
    write_tiny_project(tmp_path)
    recipe = load_recipe(tmp_path / "recipe.yaml").replace(method="sbp", kl_weight=0.0, epochs=1,
                                                           finetune_epochs=3, plots=False, quantize="none")
    data = load_data(f"npz:{tmp_path / 'data.npz'}")
    model = TinyMLP(16, (24, 12), 3)
    model.load_state_dict(torch.load(tmp_path / "model.pt"))
    logs: list[str] = []
    result = compress(model, data, recipe, tmp_path / "out", progress=False, log=logs.append)
    assert any(line.startswith("note: nothing was pruned") for line in logs), logs
    assert "noise-free fine-tuning skipped: nothing was pruned, so there is nothing for it to win back" in logs
    assert not any(line.startswith("masked epoch") for line in logs)
    assert not (tmp_path / "out" / "checkpoint-masked.pt").exists()
    assert [h.get("phase") for h in result.report["history"]] == ["variational"]


@pytest.mark.parametrize("automatic", [True, False])
def test_a_coarse_validation_sets_choice_keeps_the_budget_on_the_check_samples_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, automatic: bool) -> None:
    """On 144 validation images the sweep chose the first step of a cliff: two digits models with BatchNorm read
    99.31% there on validation and 94.72% / 95.83% on test, where their training samples showed the step. Where the
    sweep judges an automatic budget because the validation set is coarse, its choice must keep the budget on the
    checks' samples too (validation and training); a fixed β is the user's call and chooses on validation alone."""
    import dataclasses

    from prunedrop.convert import variational_layers
    from prunedrop.stages import selection as selection_module
    from prunedrop.testing import TinyMLP

    write_tiny_project(tmp_path)  # 40 validation samples: one weighs 2.5 points, a budget of 1 is coarse there
    recipe = load_recipe(tmp_path / "recipe.yaml").replace(kl_weight=1.0, max_metric_drop=1.0, plots=False)
    if automatic:
        recipe = recipe.nulled("kl_weight")
    data = load_data(f"npz:{tmp_path / 'data.npz'}")
    model = TinyMLP(16, (24, 12), 3)
    model.load_state_dict(torch.load(tmp_path / "model.pt"))
    folder = RunFolder(tmp_path / "out").create()
    example = data.example_batch(8)
    said: list[str] = []
    baseline = stages.measure_original(model.eval(), data, recipe, folder, example, said.append)
    converted = stages.convert(model, recipe, example, said.append)
    torch.manual_seed(0)
    for layer in variational_layers(converted.model).values():  # log α spread over the swept grid
        with torch.no_grad():
            spread = torch.linspace(-3.0, 7.0, layer.weight.numel())[torch.randperm(layer.weight.numel())]
            layer.log_sigma2.copy_(spread.view_as(layer.weight) + torch.log(layer.weight ** 2 + 1e-8))
    check_set = selection_module.CheckSet.for_run(recipe, data)
    assert (check_set is not None) == automatic
    if automatic:
        assert check_set.samples == data.num_val + data.num_train  # fewer than the checks' 2,000: every one
        assert sum(len(y) for _, y in check_set) == sum(len(y) for _, y in check_set) == check_set.samples
    real = selection_module.sweep_thresholds
    on_checks: list[float] = []

    def scripted(model, loader, thresholds, **kwargs):
        # every threshold keeps the original's validation metric; on the check samples those below 1 lose 10 points
        points = real(model, loader, thresholds, **kwargs)
        if isinstance(loader, selection_module.CheckSet):
            on_checks.extend(thresholds)
            before = evaluate(baseline.model, loader)["accuracy"]
            return [dataclasses.replace(p, metric=before - (10.0 if p.threshold < 1 else 0.0)) for p in points]
        return [dataclasses.replace(p, metric=baseline.metric["val"]) for p in points]

    monkeypatch.setattr(selection_module, "sweep_thresholds", scripted)
    chosen = stages.select_threshold(converted, baseline, data, recipe, resolve_device("cpu"), folder, example,
                                     resume=False, progress=False, log=said.append)
    if automatic:
        assert chosen.threshold == 1.0
        assert [r["threshold"] for r in chosen.check_set["ruled_out"]] == [-2.0, -1.5, -1.0, -0.5, 0.0, 0.5]
        # the least pruning threshold first (the reference: the lower of it and the original), then one by one
        assert on_checks == [6.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0]
        record = chosen.check_set
        assert record["least_pruning"] == 6.0 and record["reference"] == record["metric_before"]
        assert chosen.to_dict()["sweep"]["check_set"]["samples"] == data.num_val + data.num_train
        assert any("keeps the budget on the 40 validation samples" in line and "not on the 200 samples" in line
                   for line in said)
    else:
        # the grid's edge within the budget: the sweep goes past it, to the most pruning threshold that keeps a weight
        assert chosen.threshold == -3.0 and chosen.check_set is None and not on_checks


def test_seen_validation_note() -> None:
    """A model far better on its validation samples than on its test samples was trained on them: a matrix
    factorisation read mse 0.19 on validation samples split off its training data and 2.18 on test, pruned nothing and
    stopped over the budget with no word on why."""
    from prunedrop.metrics import seen_validation_note

    g = torch.Generator().manual_seed(0)
    val_err, test_err = torch.rand(200, generator=g) * 0.4, torch.rand(300, generator=g) * 4.0
    note = seen_validation_note(val_err.double(), test_err.double(), "mse", split_off=True)
    assert note is not None and "split the validation samples off the training data" in note and "x_val" in note
    assert "were the validation samples part of its training data" in seen_validation_note(
        val_err.double(), test_err.double(), "mse", split_off=False)
    # the same spread on both: no line; nor for a regression model twice as good on validation by chance alone
    assert seen_validation_note(test_err[:200].double(), test_err.double(), "mse", split_off=True) is None
    assert seen_validation_note(torch.tensor([0.1, 3.0]).double(), torch.tensor([2.0, 0.1, 4.0]).double(), "mse",
                                split_off=True) is None
    right = lambda n, k: torch.cat([torch.full((k,), 100.0), torch.zeros(n - k)]).double()  # noqa: E731
    assert seen_validation_note(right(150, 150), right(360, 320), "cross_entropy", split_off=True) is not None
    assert seen_validation_note(right(150, 148), right(360, 350), "cross_entropy", split_off=True) is None  # 98.7 / 97.2
    assert seen_validation_note(right(150, 150), None, "cross_entropy", split_off=True) is None  # no test data


def test_a_validation_split_says_it_came_off_the_training_data(tmp_path: Path) -> None:
    x, y = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32), np.arange(40) % 2
    np.savez(tmp_path / "only_train.npz", x_train=x, y_train=y)
    np.savez(tmp_path / "with_val.npz", x_train=x[:30], y_train=y[:30], x_val=x[30:], y_val=y[30:])
    assert load_data(f"npz:{tmp_path / 'only_train.npz'}").val_split_off
    assert not load_data(f"npz:{tmp_path / 'with_val.npz'}").val_split_off

"""Tests for ``budget_after_finetune``: the accuracy budget judged after the noise-free fine-tuning.

The bisection is checked against a scripted metric (which probes run, which threshold wins, what happens
when none or every probe is in budget); the end-to-end test runs the real pipeline on a tiny project and
checks that the exported model is the probe's fine-tuned model, that every probe is reported and checkpointed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from prunedrop import pipeline
from prunedrop.convert import to_variational, variational_layers
from prunedrop.data import load_data
from prunedrop.recipes import Recipe, load_recipe
from prunedrop.runfolder import RunFolder
from prunedrop.stages import bisection
from prunedrop.sweep import SweepPoint
from prunedrop.testing import ScriptedSearch, TinyMLP, write_tiny_project

THRESHOLDS = [-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]


def _point(t: float, metric: float = 95.0) -> SweepPoint:
    # a lower log α threshold prunes more: fewer parameters
    return SweepPoint(threshold=t, metric=metric, kept_weights=100 + int(20 * (t + 2)), total_weights=400,
                      params=110 + int(20 * (t + 2)), total_params=410, nonzero_macs=0, macs=0)


def _points(chosen_metric: float = 95.0) -> list[SweepPoint]:
    return [_point(t, chosen_metric) for t in THRESHOLDS]


class _Scripted(ScriptedSearch):
    """The search's training replaced (:class:`prunedrop.testing.ScriptedSearch`): the metric after fine-tuning is
    ``metric(threshold)``, or with ``by_epoch`` ``metric(threshold, epoch)`` after that epoch."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, metric, *, by_epoch: bool = False) -> None:
        super().__init__(metric if by_epoch else (lambda t, epoch: metric(t)))
        for (module, attr), stand_in in self.replacements().items():
            monkeypatch.setattr(module, attr, stand_in)


def _search(tmp_path: Path, scripted: _Scripted, chosen: SweepPoint | None, budget: float = 1.0, sweep=None,
            epochs: int = 1, confidence: float | None = None, scores_before: torch.Tensor | None = None,
            resume: bool = False):
    torch.manual_seed(0)
    recipe = Recipe(max_metric_drop=budget, budget_after_finetune=True, finetune_epochs=epochs,
                    budget_confidence=confidence)
    variational = to_variational(TinyMLP(16, (24, 12), 3), recipe)
    logs: list[str] = []
    found = bisection.search_after_finetune(variational, _points(), chosen, 90.0, recipe, scripted.data,
                                            torch.device("cpu"), RunFolder(tmp_path), torch.zeros(2, 1, 4, 4),
                                            resume=resume, progress=False, log=logs.append, sweep=sweep,
                                            grid=_points(), scores_before=scores_before)
    return found, logs


def _past_grid(t: float) -> SweepPoint:
    # past the grid's edge (−2) each half unit of threshold keeps 30% fewer weights; below −6 nothing is left
    kept = 0 if t < -6 else int(100 * 0.7 ** ((-2 - t) / 0.5))
    return SweepPoint(threshold=t, metric=10.0, kept_weights=kept, total_weights=400, params=kept + 10,
                      total_params=410, nonzero_macs=0, macs=0)


class _Sweeps:
    def __init__(self) -> None:
        self.calls: list[list[float]] = []

    def __call__(self, thresholds: list[float]) -> list[SweepPoint]:
        self.calls.append(list(thresholds))
        return [_past_grid(t) for t in thresholds]


def test_bisects_to_the_most_pruning_threshold_in_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # within the budget of 1 point (original 90) exactly where the threshold is >= -0.5
    scripted = _Scripted(monkeypatch, lambda t: 89.5 if t >= -0.5 else 80.0)
    found, logs = _search(tmp_path, scripted, chosen=None)
    assert found.best is not None and found.best[0] == -0.5
    assert found.best[2].train.history[-1]["threshold"] == -0.5  # the probe's own fine-tuning comes back with it
    # bisection: at most ceil(log2(11)) + 1 probes, each pruned and fine-tuned once
    assert len(found.probes) <= math.ceil(math.log2(len(THRESHOLDS))) + 1
    assert scripted.finetuned == len(found.probes) == len(scripted.pruned)
    assert [p["threshold"] for p in found.probes] == scripted.pruned
    assert all(p["within_budget"] == (p["threshold"] >= -0.5) for p in found.probes)
    assert any("prunes most" in line for line in logs)


def test_the_sweeps_choice_bounds_the_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted = _Scripted(monkeypatch, lambda t: 89.5 if t >= -0.5 else 80.0)
    chosen = _points()[THRESHOLDS.index(1.0)]
    found, _ = _search(tmp_path, scripted, chosen=chosen)
    assert found.best[0] == -0.5
    assert max(scripted.pruned) <= 1.0, "thresholds pruning less than the sweep's choice are never probed"


def test_the_thresholds_pruning_less_than_the_sweeps_choice_are_probed_when_none_from_it_on_holds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the fine-tuning loses accuracy instead of winning it back: the sweep's choice (-1, in budget before it) and
    # everything pruning more end outside; only 1.5 and up hold. Before, the search ended with nothing and the run
    # with an error although less pruning thresholds would have kept the budget
    scripted = _Scripted(monkeypatch, lambda t: 89.5 if t >= 1.5 else 80.0)
    chosen = _points()[THRESHOLDS.index(-1.0)]
    found, logs = _search(tmp_path, scripted, chosen=chosen)
    assert found.best is not None and found.best[0] == 1.5
    assert min(scripted.pruned) >= -2.0 and any(t > -1.0 for t in scripted.pruned)
    assert any("that prune less" in line for line in logs)
    # the second bisection is over the 8 thresholds above the choice: at most ceil(log2(8)) + 1 more probes
    bounded = [p for p in found.probes if p["threshold"] <= -1.0]
    assert len(found.probes) - len(bounded) <= math.ceil(math.log2(8)) + 1


def test_the_thresholds_pruning_less_are_probed_when_the_chosen_probe_ends_outside_after_its_fine_tuning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # everything from the sweep's choice (-1) on reads within the budget after epoch 1 and ends outside after the
    # whole fine-tuning (a gated MLP on 1,137 digits: 96.67 after 4 of 42 epochs, 96.00 at the end, 1.67 down);
    # only 1.5 and up hold at the end. Before, the search gave up ("no probed threshold keeps accuracy …") and the
    # run exported nothing, without probing the thresholds that prune less
    scripted = _Scripted(monkeypatch, lambda t, epoch: 89.5 if t >= 1.5 or (epoch == 1 and t >= -1.0) else 80.0,
                         by_epoch=True)
    chosen = _points()[THRESHOLDS.index(-1.0)]
    found, logs = _search(tmp_path, scripted, chosen=chosen, epochs=3)
    assert found.best is not None and found.best[0] == 1.5
    assert found.best[2].train.history[-1]["epoch"] == 3
    assert any("that prune less" in line for line in logs)
    continued = [p["threshold"] for p in found.probes if p.get("continued")]
    assert continued.count(-1.0) == 1  # judged outside once, not continued again by the second search


def test_every_probe_outside_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted = _Scripted(monkeypatch, lambda t: 50.0)
    found, _ = _search(tmp_path, scripted, chosen=None)
    assert found.best is None
    assert scripted.pruned[-1] == 3.0, "bisection ends at the least pruning candidate"
    assert not any(p["within_budget"] for p in found.probes)


def test_every_probe_within_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted = _Scripted(monkeypatch, lambda t: 90.0)
    found, _ = _search(tmp_path, scripted, chosen=None, budget=1e-6)
    assert found.best[0] == -2.0


def test_thresholds_that_keep_the_same_model_are_fine_tuned_once(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # after a short SBP run no threshold prunes a unit: every swept threshold keeps the same model
    tied = [SweepPoint(threshold=t, metric=90.0, kept_weights=400, total_weights=400, params=410, total_params=410,
                       nonzero_macs=0, macs=0) for t in THRESHOLDS]
    scripted = _Scripted(monkeypatch, lambda t: 90.0)
    recipe = Recipe(max_metric_drop=1.0, budget_after_finetune=True, finetune_epochs=1)
    torch.manual_seed(0)
    variational = to_variational(TinyMLP(16, (24, 12), 3), recipe)
    found = bisection.search_after_finetune(variational, tied, tied[0], 90.0, recipe, scripted.data,
                                            torch.device("cpu"), RunFolder(tmp_path), torch.zeros(2, 1, 4, 4),
                                            resume=False, progress=False, log=lambda _: None, grid=tied)
    assert found.best is not None and found.best[0] == THRESHOLDS[0]
    assert scripted.pruned == [THRESHOLDS[0]], "one fine-tuning for thresholds that keep the same weights"


def test_goes_past_the_grid_when_its_edge_is_within_the_budget(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # within the budget down to −3.5 (beyond the grid's −2); the search finds it past the grid
    scripted = _Scripted(monkeypatch, lambda t: 89.5 if t >= -3.5 else 80.0)
    sweeps = _Sweeps()
    found, logs = _search(tmp_path, scripted, chosen=None, sweep=sweeps)
    assert sweeps.calls and all(t < -2.0 for call in sweeps.calls for t in call), "only thresholds past the edge"
    past = [p for p in found.probes if p["threshold"] < -2.0]
    assert 1 <= len(past) <= bisection.EXTEND_PROBES
    assert found.best is not None and -3.5 <= found.best[0] < -2.0
    assert all(p["within_budget"] == (p["threshold"] >= -3.5) for p in found.probes)
    # each probe past the grid that came after one within the budget keeps at most EXTEND_KEEP of its parameters,
    # unless it is the probe between the last within and the first outside
    first = past[0]
    assert first["params"] <= bisection.EXTEND_KEEP * _points()[0].params
    assert found.swept and {p.threshold for p in found.swept} >= {p["threshold"] for p in past}
    assert any("past the grid" in line for line in logs)


def test_past_the_grid_stops_at_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # nothing past the grid is within the budget: one probe past it, the grid's edge stays the result
    scripted = _Scripted(monkeypatch, lambda t: 89.5 if t >= -2.0 else 80.0)
    found, _ = _search(tmp_path, scripted, chosen=None, sweep=_Sweeps())
    assert found.best[0] == -2.0
    past = [p for p in found.probes if p["threshold"] < -2.0]
    assert past and not any(p["within_budget"] for p in past)
    assert len(past) <= bisection.EXTEND_PROBES


def test_everything_within_the_budget_past_the_grid_stops_before_emptying(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    scripted = _Scripted(monkeypatch, lambda t: 90.0)
    found, _ = _search(tmp_path, scripted, chosen=None, sweep=_Sweeps())
    past = [p for p in found.probes if p["threshold"] < -2.0]
    assert len(past) == bisection.EXTEND_PROBES
    assert all(p["kept_weights"] > 0 for p in found.probes)
    assert found.best[0] == min(p["threshold"] for p in past)


def test_no_search_past_the_grid_when_its_edge_is_outside_the_budget(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    scripted = _Scripted(monkeypatch, lambda t: 89.5 if t >= -0.5 else 80.0)
    sweeps = _Sweeps()
    found, _ = _search(tmp_path, scripted, chosen=None, sweep=sweeps)
    assert found.best[0] == -0.5 and not sweeps.calls and not found.swept


def _rising(t: float, epoch: int) -> float:
    # every probe's accuracy rises over its 3 epochs; within the budget (>= 89) at the end from -1.0 on, after
    # epoch 2 from -0.5 on, after epoch 1 from 0.0 on
    return 89.5 if t >= {1: 0.0, 2: -0.5, 3: -1.0}[epoch] else 80.0


def test_probes_stop_once_within_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # _rising jumps from 10 points down to within the budget in one epoch, which no finished probe shows: the rule
    # that abandons a hopeless probe (tested below) is off here
    monkeypatch.setattr(bisection, "_hopeless", lambda *args: None)
    scripted = _Scripted(monkeypatch, _rising, by_epoch=True)
    found, logs = _search(tmp_path, scripted, chosen=None, epochs=3)
    # the same threshold as probes of the whole fine-tuning give (below), at fewer epochs
    assert found.best is not None and found.best[0] == -1.0
    first = [p for p in found.probes if not p.get("continued")]
    for p in first:
        # a probe within the budget stops after the first epoch that reads within it; one outside trains all 3
        expected = min((e for e in (1, 2, 3) if _rising(p["threshold"], e) >= 89.0), default=3)
        assert p["epochs"] == expected, p
    # the result is judged at the end of its whole fine-tuning and exported with it
    assert found.best[2].train.history[-1]["epoch"] == 3
    assert [h["epoch"] for h in found.best[2].train.history] == [1, 2, 3]
    assert scripted.epochs_trained < 3 * len(first)
    assert any(p["epochs"] < 3 for p in first) and any("stopped there" in line for line in logs)

    # probes of the whole fine-tuning (no early stop) choose the same threshold
    whole = _Scripted(monkeypatch, _rising, by_epoch=True)
    monkeypatch.setattr(bisection, "_early", lambda *args: None)
    again, _ = _search(tmp_path / "whole", whole, chosen=None, epochs=3)
    assert again.best[0] == found.best[0]
    assert whole.epochs_trained == 3 * len(again.probes) > scripted.epochs_trained


def test_a_probe_stopped_early_is_continued_to_the_end_when_chosen(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # every threshold >= -1.5 reads within the budget after epoch 1; all 3 epochs keep only >= -0.5 there
    scripted = _Scripted(monkeypatch, lambda t, epoch: 89.5 if t >= (-1.5 if epoch == 1 else -0.5) else 80.0,
                         by_epoch=True)
    found, logs = _search(tmp_path, scripted, chosen=None, epochs=3)
    continued = [p for p in found.probes if p.get("continued")]
    assert continued and all(p["epochs"] == 3 for p in continued)
    # the most pruning probe within the budget (-1.5, stopped after epoch 1) ends outside it: the next one is taken
    assert continued[0]["threshold"] == -1.5 and not continued[0]["within_budget"]
    assert found.best is not None and found.best[0] >= -0.5 and continued[-1]["within_budget"]
    assert found.best[0] == continued[-1]["threshold"]
    assert found.best[2].train.history[-1]["epoch"] == 3
    assert any("the next probe within the budget is taken" in line for line in logs)


def test_every_probe_stopped_early_and_ending_outside_leaves_no_choice(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    scripted = _Scripted(monkeypatch, lambda t, epoch: 89.5 if epoch == 1 else 80.0, by_epoch=True)
    found, _ = _search(tmp_path, scripted, chosen=None, epochs=3)
    assert found.best is None
    assert all(not p["within_budget"] for p in found.probes if p.get("continued"))


def _recovering(t: float, epoch: int) -> float:
    """Every probe ends at its own drop (0.5 points from 2.0 on, 4 more per unit of threshold below it) and wins back
    the same points over its 4 epochs: 3 more than that after epoch 1, 1 after epoch 2, 0.3 after epoch 3."""
    final = 0.5 if t >= 2.0 else 0.5 + 4.0 * (2.0 - t)
    return 90.0 - final - {1: 3.0, 2: 1.0, 3: 0.3, 4: 0.0}[epoch]


def test_a_probe_that_cannot_end_within_the_budget_is_abandoned(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    scripted = _Scripted(monkeypatch, _recovering, by_epoch=True)
    found, logs = _search(tmp_path, scripted, chosen=None, epochs=4)
    # resumed: the same choice; the chosen probe's continuation, finished now from the start, only makes the rule
    # more careful, so no probe stops earlier than it did
    resumed, _ = _search(tmp_path, scripted, chosen=None, epochs=4, resume=True)
    assert resumed.best is not None and resumed.best[0] == found.best[0]
    first_run = {p["threshold"]: p["epochs"] for p in found.probes}
    assert all(p["epochs"] >= first_run[p["threshold"]] for p in resumed.probes)
    whole = _Scripted(monkeypatch, _recovering, by_epoch=True)
    monkeypatch.setattr(bisection, "_hopeless", lambda *args: None)
    again, _ = _search(tmp_path / "whole", whole, chosen=None, epochs=4)
    # the same threshold as without the rule, in fewer epochs
    assert found.best is not None and found.best[0] == again.best[0] == 2.0
    assert [p["threshold"] for p in found.probes] == [p["threshold"] for p in again.probes]
    assert scripted.epochs_trained < whole.epochs_trained
    first = [p for p in found.probes if not p.get("continued")]
    # the first probe outside the budget trains its whole schedule: nothing has shown what the fine-tuning wins back
    outside = [p for p in first if not p["within_budget"]]
    assert outside[0]["epochs"] == 4 and "abandoned" not in outside[0]
    given_up = [p for p in first if p.get("abandoned")]
    assert given_up and all(p["epochs"] < 4 and not p["within_budget"] for p in given_up)
    # only probes that end outside the budget are abandoned, and only far outside it
    assert all(_recovering(p["threshold"], 4) < 89.0 - 1.0 for p in given_up)
    assert not any(p.get("abandoned") for p in found.probes if _recovering(p["threshold"], 4) >= 89.0)
    assert any("abandoned there" in line for line in logs)
    # each probe's validation metric after every epoch it trained is reported
    for p in found.probes:
        assert p["curve"] == [_recovering(p["threshold"], e) for e in range(1, p["epochs"] + 1)]



def test_an_abandoned_probe_is_not_continued_for_a_confident_verdict(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # _recovering's accuracies as per-sample scores of 1,000 samples (the original 90% right)
    def scores(t: float, epoch: int) -> torch.Tensor:
        lost = round(10 * (90.0 - _recovering(t, epoch)))
        return _scores(lost, 0)

    scripted = _scored(monkeypatch, scores)
    found, _ = _search(tmp_path, scripted, chosen=None, epochs=4, confidence=0.9, scores_before=_scores(0, 0))
    given_up = {p["threshold"] for p in found.probes if p.get("abandoned")}
    assert given_up
    assert not any(p.get("continued") and p["threshold"] in given_up for p in found.probes)


def test_the_abandon_rule_reads_the_finished_probes() -> None:
    def drop(metric: float) -> float:
        return 90.0 - metric

    assert bisection._hopeless("accuracy", drop, 1.0, 4, []) is None  # nothing finished: no rule
    assert bisection._hopeless("accuracy", drop, None, 4, [[4.0, 3.0, 2.5, 2.0]]) is None  # no budget
    smooth = bisection._hopeless("accuracy", drop, 1.0, 4, [[4.0, 3.0, 2.5, 2.0]])
    # after epoch 2 the finished probe won back 1 point (1/3 of 3); its late jitter (0.5) × 3 makes the margin 1.5:
    # 6 down ends at 6 − 1.5 × max(1, 6/3) = 3 > 1 + 1.5: abandoned
    said = smooth({"epoch": 2, "val_accuracy": 84.0})
    assert said is not None and said.startswith(bisection.ABANDONED)
    # 4 down: 4 − 1.5 × max(1, 4/3) = 2, within the budget plus the margin: kept
    assert smooth({"epoch": 2, "val_accuracy": 86.0}) is None
    # never after the last epoch, never on a missing or non-finite metric
    assert smooth({"epoch": 4, "val_accuracy": 50.0}) is None
    assert smooth({"epoch": 2}) is None and smooth({"epoch": 2, "val_accuracy": float("nan")}) is None
    # a finished probe whose validation metric jitters late in its schedule widens the margin: 3 × 3 = 9
    jittery = bisection._hopeless("accuracy", drop, 1.0, 4, [[4.0, 3.0, 1.0, 4.0], [4.0, 3.0, 2.5, 2.0]])
    assert jittery({"epoch": 2, "val_accuracy": 84.0}) is None
    assert jittery({"epoch": 2, "val_accuracy": 69.0}) is not None  # 21 − 1.5 × 21/3 = 10.5 > 1 + 9
    # mse: the drop is the relative increase of the error in percent, read the same way
    mse = bisection._hopeless("mse", lambda m: 100.0 * (m - 1.0), 10.0, 4, [[40.0, 30.0, 25.0, 20.0]])
    assert mse({"epoch": 2, "val_mse": 1.6}) is not None and mse({"epoch": 2, "val_mse": 1.35}) is None


def _scores(down: int, up: int) -> torch.Tensor:
    """Per-sample accuracy scores of 1,000 validation samples: the original's 900 right (90%), with ``down`` of them
    now wrong and ``up`` of its wrong ones now right. The drop is (down − up) / 10 points; its paired standard error
    grows with down + up (5 + 0 changed samples: 0.22 points; 25 + 20: 0.67)."""
    scores = torch.cat([torch.full((900,), 100.0), torch.zeros(100)]).double()
    scores[:down] = 0.0
    scores[900:900 + up] = 100.0
    return scores


def _scored(monkeypatch: pytest.MonkeyPatch, scores) -> _Scripted:
    """A scripted search whose probes score ``scores(threshold, epoch)`` per sample (the metric is their mean)."""
    scripted = _Scripted(monkeypatch, lambda t, epoch: float(scores(t, epoch).mean()), by_epoch=True)

    def sample_scores(model, loader, loss):
        t = scripted.pruned[-1]
        return scores(t, scripted.saved[f"checkpoint-masked-t{t:g}.pt"][-1]["epoch"])

    monkeypatch.setattr(bisection, "sample_scores", sample_scores)
    return scripted


def test_a_confidence_judges_each_probe_by_its_drop_and_standard_error(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # every threshold >= -0.5 reads 0.5 points down against a budget of 1; below 1.0 on many changed samples (standard
    # error 0.67: 0.5 + 1.28 × 0.67 > 1 at 90%), from 1.0 on few (0.22: 0.5 + 1.28 × 0.22 < 1)
    def scores(t: float, epoch: int) -> torch.Tensor:
        return _scores(100, 0) if t < -0.5 else _scores(25, 20) if t < 1.0 else _scores(5, 0)

    plain, _ = _search(tmp_path / "plain", _scored(monkeypatch, scores), chosen=_point(0.0))
    assert plain.best is not None and plain.best[0] == -0.5
    assert all("delta_se" not in p for p in plain.probes)

    # at 90% confidence: past the sweep's choice (0.0: judged on the measured drop, it does not bound this search)
    found, logs = _search(tmp_path / "sure", _scored(monkeypatch, scores), chosen=_point(0.0), confidence=0.9,
                          scores_before=_scores(0, 0))
    assert found.best is not None and found.best[0] == 1.0
    by_t = {p["threshold"]: p for p in found.probes}
    # 0.5 reads 0.5 points down too, on many changed samples: excluded
    assert by_t[0.5]["metric"] == pytest.approx(89.5) and not by_t[0.5]["within_budget"]
    assert all(p["delta_se"] == pytest.approx(float((scores(p["threshold"], 1) - _scores(0, 0)).std()) / math.sqrt(1000))
               for p in found.probes)
    assert by_t[1.0]["within_budget"] and by_t[1.0]["metric"] == pytest.approx(89.5)
    assert any("at 90% confidence" in line for line in logs)


def test_a_probe_stopped_early_but_not_confidently_within_is_judged_at_its_end(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # from -0.5 on, 0.5 points down at every epoch: confidently within the budget only at the end (epoch 3)
    def scores(t: float, epoch: int) -> torch.Tensor:
        return _scores(100, 0) if t < -0.5 else _scores(5, 0) if epoch == 3 else _scores(25, 20)

    scripted = _scored(monkeypatch, scores)
    found, _ = _search(tmp_path, scripted, chosen=None, epochs=3, confidence=0.9, scores_before=_scores(0, 0))
    assert found.best is not None and found.best[0] == -0.5
    first = [p for p in found.probes if p["threshold"] == -0.5]
    # stopped after epoch 1 on its measured metric, excluded there by the confident verdict, continued to the end
    assert [(p["epochs"], p["within_budget"], bool(p.get("continued"))) for p in first] == [
        (1, False, False), (3, True, True)]
    assert found.best[2].train.history[-1]["epoch"] == 3


def _compressed(tmp_path: Path, **changes):
    """The tiny project compressed into tmp_path / "out" with the budget after fine-tuning, a budget of 100 points
    (every probe within it) and the recipe's ``changes``: (report, recipe, result)."""
    write_tiny_project(tmp_path)
    recipe = load_recipe(tmp_path / "recipe.yaml").replace(**{
        "max_metric_drop": 100.0, "budget_after_finetune": True, "sweep_thresholds": [-1.0, 0.0, 1.0, 2.0, 3.0],
        "mc_samples": 0, "plots": False, "latency_runs": 0, **changes})
    model = TinyMLP(16, (24, 12), 3)
    model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    data = load_data(f"npz:{tmp_path / 'data.npz'}")
    result = pipeline.compress(model, data, recipe, tmp_path / "out", progress=False, log=lambda _: None)
    return json.loads((tmp_path / "out" / "report.json").read_text()), recipe, result


def test_end_to_end_exports_the_probed_model(tmp_path: Path) -> None:
    report, recipe, result = _compressed(tmp_path)
    out = tmp_path / "out"
    probes = report["sweep"]["after_finetune"]
    assert probes and all(p["within_budget"] for p in probes)  # a budget of 100 points admits everything
    # the most pruning swept threshold that keeps something, reached by bisection
    keeping = [p for p in report["sweep"]["points"] if p["kept_weights"] > 0]
    best = min(keeping, key=lambda p: (p["params"], p["threshold"]))
    assert report["threshold"] == best["threshold"]
    # the exported model is that probe's fine-tuned model: same validation metric, no second fine-tuning
    probe = next(p for p in probes if p["threshold"] == best["threshold"])
    assert report["metric"]["after"] == pytest.approx(probe["metric"], abs=1e-9)
    masked_epochs = [h for h in report["history"] if h.get("phase") == "masked"]
    assert len(masked_epochs) == recipe.finetune_epochs
    for p in probes:
        assert (out / f"checkpoint-masked-t{p['threshold']:g}.pt").is_file()
    assert not (out / pipeline.MASKED_CHECKPOINT).exists()
    assert result.model is not None


def test_end_to_end_probes_stop_early_and_the_chosen_one_is_continued(tmp_path: Path) -> None:
    report, _, _ = _compressed(tmp_path, finetune_epochs=3)
    probes = report["sweep"]["after_finetune"]
    first = [p for p in probes if not p.get("continued")]
    continued = [p for p in probes if p.get("continued")]
    # a budget of 100 points admits every probe after its first epoch: each stops there
    assert first and all(p["epochs"] == 1 and p["within_budget"] for p in first)
    assert len(continued) == 1 and continued[0]["epochs"] == 3 and continued[0]["threshold"] == report["threshold"]
    assert all(len(p["curve"]) == p["epochs"] and p["curve"][-1] == pytest.approx(p["metric"]) for p in probes)
    # the exported model is the continued fine-tuning's: its metric, its three epochs in the history
    assert report["metric"]["after"] == pytest.approx(continued[0]["metric"], abs=1e-9)
    assert [h["epoch"] for h in report["history"] if h.get("phase") == "masked"] == [1, 2, 3]


def test_on_by_default_for_automatic_runs_only() -> None:
    assert Recipe().budget_after_finetune is None
    assert Recipe().automatic and Recipe().judges_after_finetune(6000)  # the autopilot: judged where the model ends
    assert not Recipe().judges_after_finetune(144)  # one of 144 samples weighs 0.69 points, over half the budget
    assert Recipe(max_metric_drop=2.0).judges_after_finetune(144)
    assert Recipe(loss="mse").judges_after_finetune(10)  # a continuous metric: no sample has a weight of its own
    assert not Recipe(kl_weight=1.0).judges_after_finetune(6000)  # a fixed β: before the fine-tuning, as before
    assert Recipe(kl_weight=1.0, budget_after_finetune=True).judges_after_finetune(10)
    assert not Recipe(budget_after_finetune=False).judges_after_finetune(6000)
    assert Recipe.from_dict({"budget_after_finetune": True}).budget_after_finetune is True


def test_a_target_caps_the_choice_at_the_least_pruning_threshold_that_meets_it() -> None:
    from prunedrop.stages.budget import TARGET_REFINE_STEPS, capped, target_cap

    # params = 110 + 20·(t + 2) of 410: 410 / params is 2.05 at t = 2.5 and 1.95 at t = 3.0
    points = _points()
    recipe = Recipe(target="params=2x", max_metric_drop=1.0)
    assert target_cap(points, Recipe(max_metric_drop=1.0)) is None  # no target: no cap
    assert target_cap(points, Recipe(target="bytes=2x", max_metric_drop=1.0)) is None  # points that count no bytes
    # a bytes target counts what the file stores, and what it holds besides the parameters on both sides
    stored = [dataclasses.replace(p, stored_bytes=6 * p.params, dense_bytes=4 * p.total_params) for p in points]
    by_bytes = target_cap(stored, Recipe(target="bytes=1.5x", max_metric_drop=1.0))
    assert by_bytes.threshold == 1.5  # 4·410 bytes against 6·180: 1.52x at 1.5 (1.44x at 2)
    # 400 bytes of graph on both sides: (1640 + 400) / (6·160 + 400) = 1.5x at 0.5
    assert target_cap(stored, Recipe(target="bytes=1.5x", max_metric_drop=1.0), overhead=400).threshold == 0.5
    grid = target_cap(list(points), recipe)
    assert grid.threshold == 2.5  # on the grid: 2.5 meets 2x and prunes least, 3.0 does not meet it
    # nothing that prunes more than the cap is left to choose from
    assert [p.threshold for p in capped(points, grid, recipe)] == [2.5, 3.0]
    measured: list[float] = []

    def point_at(t: float) -> SweepPoint:
        measured.append(t)
        return _point(t)

    swept = list(points)
    refined = target_cap(swept, recipe, point_at)
    # bisected between 2.5 (meets) and 3.0 (misses): lands on the least pruning threshold that still meets it
    assert len(measured) == TARGET_REFINE_STEPS and measured[0] == 2.75
    assert 410 / refined.params >= 2.0 and refined.threshold > 2.5
    assert all(410 / _point(t).params < 2.0 for t in measured if t > refined.threshold)
    assert len(swept) == len(points) + TARGET_REFINE_STEPS  # the measured points join the sweep
    assert target_cap(list(points), Recipe(target="params=100x", max_metric_drop=1.0)) is None  # none meets it


def test_a_target_no_swept_point_meets_comes_as_close_as_it_can() -> None:
    """A target alone that no swept threshold meets exported the recipe's threshold; the nearest point is chosen
    (the fewest parameters among those that keep a weight), and none without a target or such a point."""
    from prunedrop.stages.budget import target_cap, target_closest

    recipe = Recipe(target="params=100x", max_metric_drop=None)
    points = _points()
    assert target_cap(points, recipe) is None
    assert target_closest(points, recipe).threshold == -2.0  # 110 parameters: 3.7x, the nearest to 100x
    emptied = [SweepPoint(threshold=-2.5, metric=10.0, kept_weights=0, total_weights=400, params=10, total_params=410,
                          nonzero_macs=0, macs=0), *points]
    assert target_closest(emptied, recipe).threshold == -2.0  # a point that prunes every weight exports nothing
    assert target_closest(points, Recipe(max_metric_drop=None)) is None
    assert target_closest(emptied[:1], recipe) is None


def test_a_target_and_a_budget_choose_a_point_that_fits_both_where_the_cap_itself_misses_the_budget() -> None:
    """A few validation samples make the metric jump between thresholds: the least pruning point that met a digits
    MLP's flops=2x read one image under the budget's line, points pruning a little more read one image above it, and
    the run exported 1.84× saying the budget had stopped it short of the target."""
    from prunedrop.stages.budget import cap_within_budget, capped, target_cap

    recipe = Recipe(target="params=2x", max_metric_drop=1.0)  # before: 96.0; the budget's line 95.0
    metric = {2.5: 94.5, 2.0: 95.5, 1.5: 95.0, 1.0: 93.0}  # 2.5 meets 2x but misses the budget; 2.0 and 1.5 fit both
    points = [_point(t, metric.get(t, 96.0 if t > 2.5 else 90.0)) for t in THRESHOLDS]
    cap = target_cap(list(points), recipe)
    assert cap.threshold == 2.5

    def inside(p: SweepPoint) -> bool:
        return p.metric >= 95.0

    moved = cap_within_budget(points, cap, recipe, inside)
    assert moved.threshold == 2.0  # meets the target within the budget, and prunes least of those
    assert [p.threshold for p in capped(points, moved, recipe)] == [2.0, 2.5, 3.0]
    # a cap within the budget stays; so does one that no point meeting the target can replace
    assert cap_within_budget(points, moved, recipe, inside) is moved
    assert cap_within_budget(points, cap, recipe, lambda p: p.threshold > 2.5) is cap


def test_a_flops_target_counts_the_slim_model_of_each_unit_pruning_threshold() -> None:
    from prunedrop.stages.selection import slim_costs
    from prunedrop.sweep import sweep_thresholds

    torch.manual_seed(0)
    x = torch.randn(6, 8)
    recipe = Recipe(method="sbp", target="flops=2x", max_metric_drop=1.0)
    variational = to_variational(TinyMLP(8, (16, 12), 3), recipe, example_input=x[:2])  # net.5 (the classes) kept
    with torch.no_grad():
        for layer in (variational.net[1], variational.net[3]):
            layer.mu.fill_(0.0)
            layer.log_sigma.fill_(-5.0)
        variational.net[1].mu[8:] = -15.0  # SNR far below 1: units 8..15 of the first hidden layer are pruned
        variational.net[1].log_sigma[8:] = 1.0
    point = sweep_thresholds(variational, [(x, torch.zeros(6, dtype=torch.long))], [1.0],
                             evaluate_fn=lambda m, dl: 0.0, example_input=x[:1])[0]
    exact = slim_costs(variational, recipe, x)(point)
    # thresholded: 8·8 + 12·16 + 12·3 multiply-adds; slim: the second layer no longer reads the 8 pruned units
    assert point.nonzero_macs == 8 * 8 + 12 * 16 + 12 * 3
    assert exact.nonzero_macs == 8 * 8 + 12 * 8 + 12 * 3 and exact.params == (8 * 8 + 8) + (12 * 8 + 12) + (12 * 3 + 3)
    assert exact.metric == point.metric and exact.threshold == point.threshold
    assert variational.net[1].mu[8] == -15.0 and len(variational_layers(variational)) == 2  # left as it was
    # a bytes target: the slim model's parameters, each stored dense (no zeros left in them)
    in_bytes = slim_costs(variational, Recipe(method="sbp", target="bytes=2x"), x)(point)
    assert in_bytes.stored_bytes == 4 * exact.params and in_bytes.dense_bytes == point.dense_bytes
    # nothing to correct without a target, or where single weights are pruned
    assert slim_costs(variational, Recipe(method="sbp", max_metric_drop=1.0), x) is None
    sparse = Recipe(method="sparse_vd", target="flops=2x")
    assert slim_costs(to_variational(TinyMLP(8, (16, 12), 3), sparse, example_input=x[:2]), sparse, x) is None


def test_end_to_end_default_grid_goes_past_its_edge(tmp_path: Path) -> None:
    # a budget of 100 points admits every threshold: the default grid's edge (log α > −2) is within it, so the
    # search probes past it and exports a model pruned more than the grid allows (a short, weak variational phase:
    # the grid's edge keeps weights)
    report, recipe, _ = _compressed(tmp_path, kl_weight=1.0, epochs=2, sweep_thresholds=None,
                                    quantize="none")
    past = [p for p in report["sweep"]["after_finetune"] if p["threshold"] < -2.0]
    assert 1 <= len(past) <= bisection.EXTEND_PROBES
    assert report["threshold"] < -2.0
    swept = {p["threshold"] for p in report["sweep"]["points"]}
    assert report["threshold"] in swept, "the points swept past the grid are in the report's sweep"
    grid_edge = next(p for p in report["sweep"]["points"] if p["threshold"] == -2.0)
    exported = next(p for p in report["sweep"]["points"] if p["threshold"] == report["threshold"])
    assert 0 < exported["params"] < grid_edge["params"]


def test_sweep_goes_past_the_default_grid_before_fine_tuning(tmp_path: Path) -> None:
    # judged on the sweep (no bisection after fine-tuning): the default grid's edge (log α > −2) is within the budget,
    # so thresholds past it are swept (one evaluation each) and the most pruning within the budget is chosen; a grid
    # the recipe gives is kept as it is
    write_tiny_project(tmp_path)
    base = load_recipe(tmp_path / "recipe.yaml").replace(
        kl_weight=1.0, epochs=2, max_metric_drop=100.0, budget_after_finetune=False, mc_samples=0, plots=False,
        latency_runs=0, quantize="none")
    data = load_data(f"npz:{tmp_path / 'data.npz'}")
    reports = {}
    for name, grid in (("default", None), ("given", [-2.0, -1.0, 0.0, 1.0, 2.0, 3.0])):
        model = TinyMLP(16, (24, 12), 3)
        model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
        logs: list[str] = []
        pipeline.compress(model, data, base.replace(sweep_thresholds=grid), tmp_path / name, progress=False,
                          log=logs.append)
        reports[name] = (json.loads((tmp_path / name / "report.json").read_text()), logs)
    report, logs = reports["default"]
    swept = {p["threshold"]: p for p in report["sweep"]["points"]}
    assert min(swept) < -2.0 and any("sweeping" in line and "past it" in line for line in logs)
    assert report["threshold"] < -2.0 and swept[report["threshold"]]["kept_weights"] > 0
    assert swept[report["threshold"]]["params"] < swept[-2.0]["params"]
    keeping = [p for p in swept.values() if p["kept_weights"] > 0]
    assert report["threshold"] == min(keeping, key=lambda p: (p["params"], p["threshold"]))["threshold"]
    given, given_logs = reports["given"]
    assert given["threshold"] == -2.0 and min(p["threshold"] for p in given["sweep"]["points"]) == -2.0
    assert not any("past it" in line for line in given_logs)


def test_a_finished_search_replays_from_its_report(tmp_path: Path) -> None:
    from benchmarks.replay_probes import replay

    report, _, _ = _compressed(tmp_path, finetune_epochs=3)
    out = tmp_path / "out"
    for checkpoint in out.glob("checkpoint-masked-t*.pt"):
        checkpoint.unlink()  # from the report's curves alone
    again = replay(out, abandon=True)
    assert again["threshold"] == report["threshold"]
    assert [(p["threshold"], p["epochs"], p["within_budget"]) for p in again["probes"]] == [
        (p["threshold"], p["epochs"], p["within_budget"]) for p in report["sweep"]["after_finetune"]]
    assert again["epochs_trained"] == sum(p["epochs"] for p in report["sweep"]["after_finetune"]
                                          if not p.get("continued")) + 2  # the chosen probe's last 2 epochs


def test_a_probe_with_a_non_finite_metric_is_reported_as_json() -> None:
    from prunedrop.stages.selection import Selection

    probe = {"threshold": 0.5, "metric": float("nan"), "within_budget": False, "epochs": 2,
             "curve": [float("inf"), 0.5], "delta_se": float("nan")}
    selection = Selection(threshold=1.0, points=_points(), chosen=None, cap=None, metric_before=90.0,
                          max_metric_drop=1.0, search=bisection.Search(best=None, probes=[probe]))
    reported = json.loads(json.dumps(selection.to_dict(), allow_nan=False))["sweep"]["after_finetune"]
    assert reported == [{"threshold": 0.5, "metric": None, "within_budget": False, "epochs": 2,
                         "curve": [None, 0.5], "delta_se": None}]

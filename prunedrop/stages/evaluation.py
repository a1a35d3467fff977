"""Stage 7, evaluate: the compressed model's metric on every split, held to the accuracy budget (an automatic-β run
over it stops here, before anything is exported), and its calibration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import DataBundle
from ..data.assemble import labels_of
from ..data.checks import IGNORED
from ..metrics import (
    SEE_EVERY_CLASS,
    as_classifier,
    class_changes,
    class_drop_note,
    paired_standard_error,
    position_class_changes,
    sample_scores,
    scores_metric,
)
from ..recipe_groups import is_classification
from ..recipes import Recipe
from ..uncertainty import calibration_summary
from .baseline import Baseline
from .budget import check_budget, within
from .common import measure_all
from .selection import Selection


@dataclass
class Evaluation:
    metric: dict[str, float]
    """The compressed model's metric: ``val`` and, where the data has a test split, ``test``."""
    calibration: dict[str, Any] = field(default_factory=dict)
    """``compressed``: its calibration, where the original's was measured (cross-entropy)."""
    delta_se: dict[str, float | None] = field(default_factory=dict)
    """Per split, the paired standard error of the change of the metric against the original
    (:func:`prunedrop.metrics.paired_standard_error`): how finely that split's samples measure it."""
    per_class: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Per split, each class's accuracy before and after (:func:`prunedrop.metrics.class_changes`), for classifiers
    whose labels are at hand without a pass over the data (one label per sample, or a class per position:
    :func:`prunedrop.metrics.position_class_changes`, whose rows count positions)."""

    def to_dict(self) -> dict[str, Any]:
        test = {"after": self.metric.get("test")}
        if "test" in self.metric:
            test["delta_se"] = self.delta_se.get("test")
        return {"test_metric": test, **({"calibration": self.calibration} if self.calibration else {}),
                **({"per_class": self.per_class} if self.per_class else {})}


def budget_judge(baseline: Baseline, data: DataBundle, recipe: Recipe) -> Callable[[nn.Module], tuple[bool, float]]:
    """Whether a model keeps the budget on validation data as :func:`evaluate_compressed` judges it (the same
    scores, the same paired standard error), and its validation metric."""
    def judge(model: nn.Module) -> tuple[bool, float]:
        scores = sample_scores(model.cpu().eval(), data.loader("val", recipe.eval_batch_size), loss=recipe.loss,
                               device=torch.device("cpu"))
        metric = scores_metric(scores)
        delta_se = paired_standard_error(baseline.scores["val"], scores) if "val" in baseline.scores else None
        return within(recipe, baseline.metric["val"], metric, delta_se), metric

    return judge


def evaluate_compressed(model: nn.Module, baseline: Baseline, selection: Selection, data: DataBundle,
                        recipe: Recipe, log: Callable[[str], None] | None = None) -> Evaluation:
    """Evaluate the compressed ``model`` and stop an automatic-β run over its budget
    (:func:`prunedrop.stages.budget.check_budget`); ``log`` hears of a class that lost much within it."""
    metric, scores = measure_all(model, data, recipe, torch.device("cpu"))
    delta_se = {split: paired_standard_error(baseline.scores[split], s) if split in baseline.scores else None
                for split, s in scores.items()}
    check_budget(recipe, baseline.metric["val"], metric["val"], num_val=data.num_val, delta_se=delta_se["val"])
    per_class: dict[str, list[dict[str, Any]]] = {}
    if is_classification(recipe.loss):
        for split, after in scores.items():
            held = data.split(split)  # a DataLoader of the user's may shuffle: its labels' order is not the scores'
            labels = None if isinstance(held, DataLoader) else labels_of(held)
            # a class per position, or samples without a label (whose scores are scaled: combine_scores): one more
            # pass of each model
            if labels is not None and (labels.dim() > 1 or bool((labels == IGNORED).any())):
                rows = position_class_changes(baseline.model, model, data.loader(split, recipe.eval_batch_size),
                                              loss=recipe.loss)
                if rows:
                    per_class[split] = rows
            elif labels is not None and split in baseline.scores:
                rows = class_changes(baseline.scores[split], after, labels)
                if rows:
                    per_class[split] = rows
    note = class_drop_note(per_class, metric["val"] - baseline.metric["val"], recipe.max_metric_drop)
    if note and log is not None:
        log(f"note: {note}{SEE_EVERY_CLASS}")
    calibration = {}
    if selection.calibration:
        calibration["compressed"] = calibration_summary(as_classifier(model, recipe.loss),
                                                        data.loader("val", recipe.eval_batch_size))
    return Evaluation(metric=metric, calibration=calibration, delta_se=delta_se, per_class=per_class)

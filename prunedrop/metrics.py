"""The data term and the metrics every stage measures with: the loss (cross-entropy or mean squared error), the
metric's name, evaluation of a model on a loader, and the share of weights the current thresholds keep."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import astuple, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .convert import variational_layers
from .data.checks import IGNORED
from .errors import PrunedropError
from .recipe_groups import is_classification

#: the error where every label is :data:`IGNORED`
NO_LABELS = f"every label of the evaluation data is {IGNORED} (a label to ignore): there is nothing to measure"


def labelled(target: torch.Tensor) -> torch.Tensor:
    """Where ``target`` holds a label: everywhere but at :data:`IGNORED`."""
    return target != IGNORED


def class_logits(output: torch.Tensor, loss: str) -> torch.Tensor:
    """The outputs as logits over the classes: for ``binary_cross_entropy`` the one logit ``z`` becomes ``[0, z]``,
    whose softmax is ``[1 − σ(z), σ(z)]`` and whose argmax is ``z > 0``, so that accuracy, calibration and the
    two-class cross-entropy (equal to the binary one) read it as any classifier's; other losses' outputs as they are."""
    if loss == "binary_cross_entropy":
        # (N, 1), (N,) from a model that squeezes its last axis, or (N, 1, *positions) from one that predicts a
        # logit per position (a binary segmentation mask): the class axis is the second; (N, k) from a multi-label
        # model (a logit per label) is read as k positions of one logit each, (N, 1, k)
        if multi_label(output, loss):
            logit = output.unsqueeze(1)
        else:
            logit = output.reshape(output.shape[0], 1) if output.dim() <= 2 else output
        return torch.cat([torch.zeros_like(logit), logit], dim=1)
    return output


def correct(output: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Whether each label is predicted: the argmax over the class axis (the second) of :func:`class_logits`
    against ``target``, one label per sample, or one per position of a model that predicts per position ((N, C, *S)
    outputs against (N, *S) labels; a binary mask's (N, 1, *S) labels too; a multi-label model's (N, k) logits
    against (N, k) labels of 0s and 1s). A bool tensor of the labels' count."""
    predicted = class_logits(output, loss).argmax(dim=1)
    if target.shape != predicted.shape and target.numel() == predicted.numel():
        target = target.reshape(predicted.shape)  # (N, 1, H, W) masks against (N, H, W) predictions
    return predicted == target


def multi_label(output: torch.Tensor, loss: str) -> bool:
    """Whether ``output`` is a multi-label model's: binary cross-entropy of a (N, k) logit per label, k > 1."""
    return loss == "binary_cross_entropy" and output.dim() == 2 and output.shape[1] > 1


def label_accuracy(right: float, labels: float) -> float:
    """The accuracy in % from the labels predicted and the labels counted over a split (:func:`hits`)."""
    if labels == 0:
        raise PrunedropError(NO_LABELS)
    return 100.0 * right / labels


def hits(output: torch.Tensor, target: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample of one batch, float64 on the CPU: how many of its labels ``output`` predicts (:func:`correct`),
    and how many labels it has (those not :data:`IGNORED`: a tagger's padding)."""
    hit = correct(output, target, loss)
    counted = labelled(target).reshape(hit.shape)
    n = hit.shape[0]
    return ((hit & counted).reshape(n, -1).double().sum(dim=1).cpu(),
            counted.reshape(n, -1).double().sum(dim=1).cpu())


class TwoClassLogits(nn.Module):
    """A one-logit binary classifier seen as a two-class one (:func:`class_logits`), for code that reads logits
    over the classes (calibration, Monte Carlo predictions). Holds the model as a submodule."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return class_logits(self.model(x), "binary_cross_entropy")


class ClassesLast(nn.Module):
    """A model that predicts per position ((N, C, *S) logits: a segmentation or a per-token model) with its class
    axis moved last, (N, *S, C), for code that reads logits over the last axis (calibration's softmax, Monte Carlo
    predictions); (N, C) outputs pass as they are. Holds the model as a submodule."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out.movedim(1, -1) if out.dim() > 2 else out


def as_classifier(model: nn.Module, loss: str) -> nn.Module:
    """``model`` as a classifier whose last axis holds its classes' logits: wrapped in :class:`TwoClassLogits` for
    ``binary_cross_entropy``, and in :class:`ClassesLast` (which passes (N, C) outputs as they are)."""
    return ClassesLast(TwoClassLogits(model) if loss == "binary_cross_entropy" else model)


def data_loss(loss: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The data term: mean cross-entropy, binary cross-entropy of one logit (or of each, for a multi-label model),
    or mean squared error for regression. Labels :data:`IGNORED` count in neither mean (a batch of nothing but
    them gives 0, with the graph's gradient: zero)."""
    if loss == "cross_entropy":
        # torch's mean over the labels not IGNORED (its default ignore_index), bit for bit, without its 0/0 where
        # there are none, and without asking the device whether there are (one synchronisation per step)
        return F.cross_entropy(output, target, reduction="sum") / labelled(target).sum().clamp(min=1)
    if loss == "binary_cross_entropy":
        target = target.reshape(output.shape)
        counted = labelled(target)
        if bool(counted.all()):  # torch's own mean, whose gradient differs in the last bits from the sum's
            return F.binary_cross_entropy_with_logits(output, target.to(output.dtype))
        each = F.binary_cross_entropy_with_logits(output, target.clamp(min=0).to(output.dtype), reduction="none")
        return (each * counted).sum() / counted.sum().clamp(min=1)
    if loss == "mse":
        return F.mse_loss(output, target.to(output.dtype).reshape(output.shape))
    raise PrunedropError(f"unknown loss {loss!r}")


def metric_name(loss: str) -> str:
    return "accuracy" if is_classification(loss) else "mse"


def _outputs(model: nn.Module, loader: Any, device: torch.device | str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(output, target) per batch of ``loader``, ``model`` in eval mode (the caller runs without gradients); its
    training flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        for x, y in loader:
            yield model(x.to(device)), y.to(device)
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class EvalSums:
    """What :func:`evaluate` sums over the batches: samples, loss × samples, labels predicted and counted, squared
    error and target values. :func:`accumulate` goes on from one, so that a first part's sums (a check's validation
    samples) come out of the same pass as the whole's, in the same order of addition."""

    total: int = 0
    loss_sum: float = 0.0
    right: float = 0.0
    labels: float = 0.0
    sq_err: float = 0.0
    values: int = 0

    def result(self, loss: str) -> dict[str, float]:
        """Mean loss and the metric, as :func:`evaluate` gives them."""
        if self.total == 0:
            raise PrunedropError("the evaluation data is empty")
        metric = label_accuracy(self.right, self.labels) if is_classification(loss) else self.sq_err / max(self.values, 1)
        return {"loss": self.loss_sum / self.total, metric_name(loss): metric}


@torch.no_grad()
def accumulate(model: nn.Module, loader: Any, *, loss: str = "cross_entropy", device: torch.device | str = "cpu",
               start: EvalSums | None = None) -> EvalSums:
    """:class:`EvalSums` of ``model`` in eval mode over ``loader``, added to ``start``'s."""
    total, loss_sum, right, labels, sq_err, values = astuple(start or EvalSums())
    for out, y in _outputs(model, loader, device):
        n = y.shape[0]
        loss_sum += float(data_loss(loss, out, y)) * n
        if is_classification(loss):
            r, counted = hits(out, y, loss)
            right += float(r.sum())
            labels += float(counted.sum())
        else:
            sq_err += float(F.mse_loss(out, y.to(out.dtype).reshape(out.shape), reduction="sum"))
            values += out.numel()
        total += n
    return EvalSums(total, loss_sum, right, labels, sq_err, values)


def evaluate(model: nn.Module, loader: Any, *, loss: str = "cross_entropy",
             device: torch.device | str = "cpu") -> dict[str, float]:
    """Mean loss and the metric (accuracy in % over every label, one per sample or one per position of a model that
    predicts per position, those :data:`IGNORED` left out, or the mean squared error over every target value, as
    for ``sklearn.metrics.mean_squared_error``) of ``model`` in eval mode."""
    return accumulate(model, loader, loss=loss, device=device).result(loss)


@torch.no_grad()
def sample_scores(model: nn.Module, loader: Any, *, loss: str = "cross_entropy",
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """The metric per sample, float64, in loader order: 100 where ``model`` (eval mode) classifies it correctly and
    0 where not (for per-position labels, the percentage of its positions classified correctly), or its mean squared
    error over its target values; their mean is :func:`evaluate`'s metric (:func:`combine_scores`)."""
    return combine_scores([batch_scores(out, y, loss) for out, y in _outputs(model, loader, device)])


def batch_scores(out: torch.Tensor, y: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's part of :func:`sample_scores`, from the model's outputs ``out`` and the targets ``y`` (a torch
    model's, or an ONNX file's run by onnxruntime: :func:`prunedrop.quantize.onnx_sample_scores`): per sample, 100 ×
    its labels predicted and the count of its labels (:func:`hits`), or its summed squared error and its count of
    target values; float64 on the CPU."""
    if is_classification(loss):
        right, counted = hits(out, y, loss)
        return 100.0 * right, counted
    err = F.mse_loss(out, y.to(out.dtype).reshape(out.shape), reduction="none").reshape(out.shape[0], -1).double()
    return err.sum(dim=1).cpu(), torch.full((out.shape[0],), float(err.shape[1]), dtype=torch.float64)


def combine_scores(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The per-sample scores from the batches' :func:`batch_scores`: each sample's share of its labels right (or
    its mean squared error) where every sample has as many; else, where some labels are :data:`IGNORED` (a tagger's
    padded sequences), each sample's count right scaled by samples / labels, so that their mean is still the
    accuracy over every label, as :func:`evaluate` measures it, and a sample with no label scores 0 for any model."""
    if not parts:
        raise PrunedropError("the evaluation data is empty")
    total, counts = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    if bool((counts == counts[0]).all()) and float(counts[0]) > 0:
        return total / counts
    if float(counts.sum()) == 0:
        raise PrunedropError(NO_LABELS)
    return total * (counts.numel() / float(counts.sum()))


def scores_metric(scores: torch.Tensor) -> float:
    """The metric from :func:`sample_scores`: sum / count, as :func:`evaluate` divides; for one label per sample the
    sum is exactly 100 × the correct samples, so the accuracy is the same float."""
    return float(scores.sum()) / scores.numel()


def paired_standard_error(before: torch.Tensor, after: torch.Tensor) -> float | None:
    """Standard error of ``after.mean() − before.mean()`` when both models were measured on the same samples (the
    per-sample scores of :func:`sample_scores`): the sample standard deviation of the per-sample differences over
    √n. Pairing counts only the samples on which the two models differ, so it is far below the error of either
    metric alone. None with fewer than two samples, different sample counts or a non-finite score."""
    if before.shape != after.shape or before.numel() < 2:
        return None
    se = float((after - before).std(unbiased=True)) / math.sqrt(before.numel())
    return se if math.isfinite(se) else None


def kept_fraction(model: nn.Module) -> float:
    """Share of the variational layers' weights that the current thresholds keep."""
    kept, total = 0, 0
    with torch.no_grad():
        for layer in variational_layers(model).values():
            mask = layer.keep_mask()
            kept += int(mask.sum())
            total += mask.numel()
    return kept / total if total else 1.0


def class_changes(before: torch.Tensor, after: torch.Tensor, labels: torch.Tensor) -> list[dict[str, Any]]:
    """Per class, the accuracy of two models on the same samples, from their per-sample scores (100 or 0 each,
    :func:`sample_scores`) and the samples' class ``labels`` (one per sample): ``{"label", "samples", "before",
    "after"}`` in label order. An accuracy budget holds over all samples: a class of a few samples can lose much of
    its accuracy within it (a rare class of a fraud detector), which this shows. Empty where the three do not match
    one to one."""
    if not (before.shape == after.shape == labels.shape and labels.ndim == 1 and labels.numel()):
        return []
    labels = labels.long()
    counted = labelled(labels)
    if not bool(counted.all()):
        before, after, labels = before[counted], after[counted], labels[counted]
        if not labels.numel():
            return []
    counts = torch.bincount(labels)  # one pass per model, whatever the number of classes
    sums = {name: torch.bincount(labels, weights=scores.double()) for name, scores in (("before", before),
                                                                                         ("after", after))}
    return [{"label": k, "samples": int(counts[k]), "before": float(sums["before"][k] / counts[k]),
             "after": float(sums["after"][k] / counts[k])} for k in torch.nonzero(counts).flatten().tolist()]


@torch.no_grad()
def position_class_changes(before: nn.Module, after: nn.Module, loader: Any, *, loss: str = "cross_entropy",
                           device: torch.device | str = "cpu") -> list[dict[str, Any]]:
    """:func:`class_changes` for labels per position (a segmentation's masks): each class's accuracy over the
    positions labelled with it (its "samples" are positions), from one pass of each model over ``loader``, which
    must give the same batches in the same order twice. For a multi-label model ((N, k) logits, labels of 0s and
    1s) each label's recall instead: the share of the samples that carry it where the model finds it (rows marked
    ``"of": "positives"``), as a classifier's per-class accuracy is its recall."""
    right: dict[str, list[torch.Tensor]] = {"before": [], "after": []}
    labels = []
    tags = False
    for name, model in (("before", before), ("after", after)):
        for out, y in _outputs(model, loader, device):
            hit = correct(out, y, loss)
            y = y.reshape(hit.shape)
            tags = multi_label(out, loss)
            if tags:  # the positives of each label, named by its output's index
                positive = y == 1
                hit = hit[positive]
                y = torch.nonzero(positive)[:, 1]
            counted = labelled(y).reshape(-1)
            right[name].append(100.0 * hit.reshape(-1)[counted].double().cpu())
            if name == "before":
                labels.append(y.reshape(-1)[counted].cpu())
    if not labels:
        return []
    rows = class_changes(torch.cat(right["before"]), torch.cat(right["after"]), torch.cat(labels))
    return [{**r, "of": "positives"} for r in rows] if tags else rows


#: a class whose validation accuracy fell by at least this many points (and twice the budget) is named in the log
CLASS_DROP_WARNING = 10.0


def class_drop_note(per_class: Any, overall: float, budget: float | None) -> str | None:
    """One line naming the class whose validation accuracy fell most, when it fell by at least
    :data:`CLASS_DROP_WARNING` points and twice the budget: the budget holds over all samples, not per class."""
    rows = [r for r in (per_class.get("val") or []) if r["after"] < r["before"]]
    if not rows:
        return None
    worst = max(rows, key=lambda r: r["before"] - r["after"])
    drop = worst["before"] - worst["after"]
    if drop < max(CLASS_DROP_WARNING, 2 * (budget or 0.0)):
        return None
    if worst.get("of") == "positives":
        return (f"label {worst['label']} lost {drop:.3g} points of recall on validation data ({worst['samples']} "
                f"samples carry it: found in {worst['before']:.4g} → {worst['after']:.4g}%), while the accuracy over "
                f"all labels moved {overall:+.3g}: the budget holds over all labels, not per label")
    return (f"class {worst['label']} lost {drop:.3g} points on validation data ({worst['samples']} samples: "
            f"{worst['before']:.4g} → {worst['after']:.4g}%), while the accuracy over all samples moved "
            f"{overall:+.3g}: the budget holds over all samples, not per class")


def absent_class_note(train: Any, val: Any, test: Any = None) -> str | None:
    """One line naming the classes that occur in the training labels but in no validation label (one label per
    sample, where the splits hold them at hand: :func:`~prunedrop.data.assemble.labels_of`): the budget is judged on
    validation data, so it cannot see what compression costs them (a four-class set whose fourth class was left out
    of validation: nothing said). None where every class is there, or the labels are not at hand."""
    from .data.assemble import labels_of

    held = [None if split is None else labels_of(split) for split in (train, val, test)]
    if held[0] is None or held[1] is None or held[0].dim() != 1 or held[1].dim() != 1 \
            or held[0].is_floating_point() or held[1].is_floating_point():
        return None
    counts = [None if y is None or y.dim() != 1 else torch.bincount(y[y >= 0]) for y in held]
    absent = [k for k in range(len(counts[0])) if counts[0][k] > 0 and (k >= len(counts[1]) or counts[1][k] == 0)]
    if not absent:
        return None

    def n(c: torch.Tensor | None, k: int) -> int:
        return 0 if c is None or k >= len(c) else int(c[k])

    shown = ", ".join(f"{k} ({n(counts[0], k):,} training"
                      + (f", {n(counts[2], k):,} test" if counts[2] is not None else "") + " samples)"
                      for k in absent[:5])
    more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
    which = "class" if len(absent) == 1 else "classes"
    return (f"{which} {shown}{more} of the training data {'has' if len(absent) == 1 else 'have'} no validation "
            "sample: the budget, judged on validation data, cannot see what compression costs "
            f"{'it' if len(absent) == 1 else 'them'}; report.md's per-class table shows the test data's, or give "
            "validation data that holds every class")


class _Targets:
    """What a loader's targets tell, gathered while the batches pass through unchanged: ``for x, y in
    self.through(loader)``; :meth:`_add` takes each batch's targets, and sets ``usable`` False where they are of no
    use."""

    usable = True

    def through(self, loader: Any) -> Iterator[Any]:
        for batch in loader:
            if self.usable:
                self._add(batch[1])
            yield batch

    def _add(self, y: Any) -> None:
        raise NotImplementedError


class LabelCounts(_Targets):
    """Counts the class labels a loader gives (one per sample or per position, :data:`IGNORED` left out), passed
    through unchanged: ``for x, y in counts.through(loader)``. Only single-label classification labels are counted
    (a one-logit binary classifier's 0/1 included, a multi-label model's rows not): :attr:`counts` stays None
    otherwise. Where each sample has one label, none ignored, :attr:`labels` holds them in order. For
    :func:`chance_note`."""

    def __init__(self, loss: str) -> None:
        self.loss = loss
        self.counts: torch.Tensor | None = None
        self.usable = is_classification(loss)
        self._labels: list[torch.Tensor] | None = []

    @property
    def labels(self) -> torch.Tensor | None:
        return torch.cat(self._labels) if self.usable and self._labels else None

    def _add(self, y: Any) -> None:
        if not isinstance(y, torch.Tensor) or (self.loss != "cross_entropy" and y.dim() > 1 and y.shape[-1] != 1):
            self.usable, self.counts = False, None  # a multi-label model's rows of 0s and 1s
            return
        one_per_sample = y.dim() == 1 or (y.dim() == 2 and y.shape[1] == 1)
        y = y.detach().reshape(-1)
        if y.is_floating_point():
            if not bool((y == y.round()).all()):
                self.usable, self.counts = False, None
                return
            y = y.long()
        y = y.cpu()
        if self._labels is not None:
            if one_per_sample and bool((y >= 0).all()):
                self._labels.append(y)
            else:
                self._labels = None  # labels per position, or samples without one
        y = y[y >= 0]
        counts = torch.bincount(y)
        if self.counts is None:
            self.counts = counts
            return
        if counts.numel() > self.counts.numel():
            counts, self.counts = self.counts, counts
        self.counts[:counts.numel()] += counts


class TargetSpread(_Targets):
    """The sums a loader's regression targets give (per target column: count, sum, sum of squares, float64),
    passed through unchanged like :class:`LabelCounts`: the error of always predicting each column's mean
    (:meth:`constant_error`), for :func:`mean_note`."""

    def __init__(self) -> None:
        self.count = 0
        self.sums: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def _add(self, y: Any) -> None:
        if not isinstance(y, torch.Tensor) or y.dim() == 0:
            self.usable = False
            return
        y = y.detach().reshape(y.shape[0], -1).double().cpu()
        if self.sums is not None and self.sums.shape[0] != y.shape[1]:
            self.usable = False
            return
        sums, squares = y.sum(dim=0), (y * y).sum(dim=0)
        self.sums = sums if self.sums is None else self.sums + sums
        self.squares = squares if self.squares is None else self.squares + squares
        self.count += y.shape[0]

    def constant_error(self) -> float | None:
        """The mean squared error, over every target value, of predicting each column's mean; None without two
        samples."""
        if not self.usable or self.sums is None or self.squares is None or self.count < 2:
            return None
        mean = self.sums / self.count
        variance = (self.squares / self.count - mean * mean).clamp(min=0.0)
        return float(variance.mean())


def mean_note(metric: float, constant: float | None, split: str = "validation") -> str | None:
    """One line for a regression model whose mean squared error ``metric`` on the ``split`` data is no lower than
    that of always predicting the targets' mean (``constant``, :meth:`TargetSpread.constant_error`; R² ≤ 0): an
    untrained model, or one whose weights were never loaded."""
    if constant is None or not math.isfinite(metric) or constant <= 0.0 or metric < constant:
        return None
    return (f"the given model's {split} mean squared error, {metric:.4g}, is no lower than always predicting the "
            f"targets' mean ({constant:.4g}; R² {1.0 - metric / constant:.3g}): was it trained, and were its weights "
            "loaded? A budget kept against it says nothing about a trained model")


def seen_validation_note(val: torch.Tensor | None, test: torch.Tensor | None, loss: str, *,
                         split_off: bool) -> str | None:
    """One line where the given model does far better on its validation samples than on its test samples
    (per-sample scores, :func:`sample_scores`): apart by more than three standard errors of the difference, and the
    test error at least twice the validation error (for a classifier also at least 5 points apart). The usual cause is
    a model trained on the validation samples: ``split_off`` (prunedrop split them off the training data, as the spec
    had none) and a model trained on the whole training data. The budget is then judged on samples the model knows
    by heart, which any retraining loses: a matrix factorisation read mse 0.19 on them and 2.18 on its test data,
    pruned nothing and stopped over the budget."""
    if val is None or test is None or val.numel() < 2 or test.numel() < 2:
        return None
    if not (bool(torch.isfinite(val).all()) and bool(torch.isfinite(test).all())):
        return None
    mv, mt = float(val.mean()), float(test.mean())
    se = math.sqrt(float(val.var()) / val.numel() + float(test.var()) / test.numel())
    if is_classification(loss):
        gap, far = mv - mt, (100.0 - mt) >= 2.0 * (100.0 - mv) and mv - mt >= 5.0
        read = f"accuracy {mv:.4g}% on its validation data and {mt:.4g}% on its test data"
    else:
        gap, far = mt - mv, mt >= 2.0 * mv
        read = f"mean squared error {mv:.4g} on its validation data and {mt:.4g} on its test data"
    if not far or not gap > 3.0 * se:
        return None
    why = ("prunedrop split the validation samples off the training data (the data has no validation split): if the "
           "model was trained on all of it, it knows them by heart" if split_off else
           "were the validation samples part of its training data? Then it knows them by heart")
    return (f"the given model reads {read} (±{se:.2g} apart): {why}, the budget is judged on them, and any retraining "
            "loses some of what was memorised (the run may prune nothing, or stop over the budget); give validation "
            "data it was not trained on (x_val/y_val in an npz file, a val/ folder: docs/cli.md)")


def chance_note(metric: float, counts: torch.Tensor | None, split: str = "validation", *,
                labels: torch.Tensor | None = None, scores: torch.Tensor | None = None) -> str | None:
    """One line for a classifier that is not measurably better on the ``split`` data than always predicting one
    label, or guessing: an untrained model (weights never loaded), or one that learnt nothing, against which a kept
    budget means nothing. ``counts``: :attr:`LabelCounts.counts`; no line where fewer than two classes occur.

    Where each sample has one label (``labels``, :attr:`LabelCounts.labels`) and its score (``scores``, 100 or 0:
    :func:`sample_scores`), the test is on the accuracy averaged over the classes (balanced accuracy): one label
    always predicted, or guesses, average 1/K over K classes, whatever their shares, while a model that learnt a
    rare class stands clear of it even where its plain accuracy lies near that of predicting the frequent one (a
    fraud detector's 98.5%). It is within two standard errors of 1/K, or below: the line. Otherwise (labels per
    position) the plain accuracy ``metric`` (in %) against the most frequent label's share, within two binomial
    standard errors."""
    if counts is None or int((counts > 0).sum()) < 2:
        return None
    total = int(counts.sum())
    if labels is not None and scores is not None and labels.shape == scores.shape and labels.dim() == 1:
        classes = torch.unique(labels)
        chance = 1.0 / classes.numel()
        recalls, variance = [], 0.0
        for k in classes.tolist():
            right = scores[labels == k].double() / 100.0
            recalls.append(float(right.mean()))
            variance += max(recalls[-1] * (1.0 - recalls[-1]), chance * (1.0 - chance)) / right.numel()
        balanced = sum(recalls) / len(recalls)
        if balanced > chance + 2.0 * math.sqrt(variance) / len(recalls):
            return None
        return (f"the given model's {split} accuracy, {metric:.4g}%, averages {100.0 * balanced:.4g}% over its "
                f"{len(recalls)} classes, no better than always predicting one label or guessing "
                f"({100.0 * chance:.4g}% averaged over the classes): was it trained, and were its weights loaded? "
                "A budget kept against it says nothing about a trained model")
    top = int(counts.argmax())
    share = float(counts[top]) / total
    margin = 200.0 * math.sqrt(max(share * (1.0 - share), 1.0 / total) / total)
    if metric > 100.0 * share + margin:
        return None
    return (f"the given model's {split} accuracy, {metric:.4g}%, is no better than always predicting its most frequent "
            f"label ({top}: {100.0 * share:.4g}% of {total:,} labels): was it trained, and were its weights loaded? "
            "A budget kept against it says nothing about a trained model")


#: what the log's and the terminal's class note add: report.md holds the table
SEE_EVERY_CLASS = " (report.md lists every class, or every label of a multi-label model)"

"""What the model predicts against what the data's labels say, checked before any file is written: the model's
output per sample (one forward pass, and one in training mode), the data term that fits the pair (binary
cross-entropy for a one-logit classifier or a multi-label model, chosen by itself), and the labels' shape and
values against the outputs. :func:`fit_task` runs them all; ``prunedrop compress`` calls it before its folder is
made, :func:`prunedrop.pipeline.compress` before it writes anything, so that a mistake is one line from Python too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .data import DataBundle, binary_labels, check_labels
from .data.assemble import label_shape, multi_hot_labels, runs_on
from .data.token_ids import check_token_ids, checked_token_ids
from .errors import PrunedropError
from .modes import untouched
from .recipe_groups import is_classification
from .recipes import Recipe
from .safety import check_deterministic, check_loss_targets, check_model_structure


def fit_task(model: nn.Module, data: DataBundle, recipe: Recipe, log: Callable[[str], None] | None = None) -> Recipe:
    """``recipe`` with the data term the model and its labels call for, after checking that they pair up; raises
    :class:`PrunedropError` where they do not. A model with one output and labels 0 and 1 (a one-logit binary
    classifier: the cross-entropy over one output is 0 whatever it predicts), and labels that are vectors of 0s
    and 1s, one per output, not one-hot (a multi-label model), get ``loss: binary_cross_entropy``; ``log`` hears
    of it."""
    check_token_ids(model, data)
    num_outputs, output_shape = model_outputs(model, data)
    if recipe.loss == "cross_entropy" and num_outputs == 1 and binary_labels(data):
        recipe = recipe.replace(loss="binary_cross_entropy")
        if log is not None:
            log("the model has one output and the labels are 0 and 1: a one-logit binary classifier, trained with "
                "binary cross-entropy (loss: binary_cross_entropy)")
    elif recipe.loss == "cross_entropy" and output_shape == label_shape(data) and multi_hot_labels(data):
        recipe = recipe.replace(loss="binary_cross_entropy")
        if log is not None:
            log(f"the labels are vectors of 0s and 1s, one per output of the model ({num_outputs}), some with other "
                "than a single 1: a multi-label model, trained with binary cross-entropy per output (loss: "
                "binary_cross_entropy); its accuracy counts every label of every sample")
    check_label_shape(output_shape, label_shape(data), recipe.loss)
    check_loss_targets(recipe.loss, data, num_outputs, output_shape)
    check_labels(data, num_outputs, recipe.loss)
    check_single_sample_batches(model, data, recipe.batch_size)
    return recipe


def check_single_sample_batches(model: nn.Module, data: DataBundle, batch_size: int) -> None:
    """One line, before any file, where every training batch holds one sample (a DataLoader of ``batch_size=1``,
    recipe key ``batch_size: 1``, a training set of one sample) and the model cannot train on one, though it trains
    on two: a BatchNorm in training mode normalises over the batch ("Expected more than 1 value per channel when
    training", at the first step). Such batches are kept for any other model. The buffers, the random state and the
    modes are left as they were; a forward that fails on two samples as well is left to training to report."""
    why = data.single_sample_batches(batch_size)
    if why is None:
        return
    one = data.example_batch(1, "train")
    try:
        _train_forward(model, one)
        return
    except Exception as e:  # noqa: BLE001 - told apart below: one sample, or anything
        failure = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    try:
        _train_forward(model, data.example_batch(2, "train"))
    except Exception:  # noqa: BLE001 - not the batch size: training reports it
        return
    norms = [f"{type(m).__name__} {name!r}" for name, m in model.named_modules()
             if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm))]
    raise PrunedropError(
        f"every training batch holds one sample ({why}), which the model cannot train on ({failure}"
        + (f"; its {norms[0]} normalises over the batch" if norms else "")
        + "): give batches of at least 2 samples")


def _train_forward(model: nn.Module, x: torch.Tensor) -> None:
    """One training-mode forward pass on ``x``, leaving the buffers, the random state and the modes as they were."""
    with untouched(model):
        model.train()(x)


def model_outputs(model: Any, data: Any) -> tuple[int, tuple[int, ...]]:
    """The model's number of outputs (classes, or regression targets) and its output's shape per sample, from one
    forward pass on an example input (and one in training mode); the model must run on every split's inputs."""
    x = data.example_batch(2)
    try:
        with checked_token_ids(model, f"the validation inputs of {data.name}"):
            shape = output_shape_on(model, x, what="the validation data's inputs")
    except PrunedropError as e:
        # an image folder read with another channel count than the model's first layer takes: say which one fits
        if str(data.name).startswith("imagefolder:") and x.dim() == 4 and x.shape[1] in (1, 3):
            other = 4 - x.shape[1]  # 1 ↔ 3
            if runs_on(model, x[:, :1].expand(-1, other, -1, -1) if other == 3 else x.mean(1, keepdim=True)):
                raise PrunedropError(f"{e.message}; the images are read with {x.shape[1]} channel(s) and the model "
                                     f"takes {other}: set the recipe key image_channels: {other}") from None
        raise
    _check_training_output(model, x, len(shape) + 1)
    _check_other_splits(model, data)
    return (shape[0] if shape else 1), shape


def _check_other_splits(model: Any, data: Any) -> None:
    """One line, before any file, where the model cannot run on the first inputs of the training or test split
    though it runs on the validation split's: float64 training inputs beside float32 validation ones stopped the
    run at its first training step with a traceback, after run.json and original.onnx were written."""
    for split, name in (("train", "training"), ("test", "test")):
        if getattr(data, split) is None:
            continue
        other = data.example_batch(2, split)
        if not runs_on(model, other):
            with checked_token_ids(model, f"the {name} inputs of {data.name}"):
                output_shape_on(model, other, what=f"the {name} data's inputs")  # the model's error, in one line


def check_label_shape(output: tuple[int, ...], labels: tuple[int, ...] | None, loss: str) -> None:
    """One line, before any file, where the model's outputs (per sample: ``output``) and the data's class labels
    (per sample: ``labels``; None where unknown) do not pair up: one label per sample for (C,) outputs, one per
    position for (C, *S) outputs (a segmentation's (C, H, W) against (H, W) masks, or (1, H, W) masks of a
    one-logit model; a multi-label model's (k,) against (k,) labels of 0s and 1s). Regression targets are
    :func:`prunedrop.safety.check_loss_targets`' to check."""
    if labels is None or not is_classification(loss):
        return
    positions = output[1:]
    if labels == positions or (not positions and labels == (1,)) or (positions and output[0] == 1 and labels == output):
        return
    if not positions and labels == output and loss == "binary_cross_entropy":
        return  # a multi-label model: a 0/1 label per output
    shown = f"(N, {', '.join(map(str, labels))})" if labels else "(N,)"
    if len(output) > 1 and labels == output[:-1] and labels != positions:
        raise PrunedropError(
            f"the model returns (N, {', '.join(map(str, output))}), its classes on the last axis, as a tagger's "
            f"Linear gives them; prunedrop reads the classes on the second axis, as torch's cross_entropy does, "
            f"(N, {output[-1]}, {', '.join(map(str, labels))}): return out.movedim(-1, 1) in a module that wraps the "
            "model, and pass that as --arch")
    if len(output) > 1 and labels == output:
        raise PrunedropError(
            f"the model returns (N, {', '.join(map(str, output))}), the labels' shape: a model that predicts per "
            "position returns its classes on the second axis, (N, C, *positions) (a one-logit mask model (N, 1, "
            "*positions)); give it that axis in its forward (out.unsqueeze(1)) and pass that as --arch")
    if not positions:
        raise PrunedropError(
            f"the data's labels are shaped {shown}, but the model predicts one class per sample (outputs (N, "
            f"{output[0] if output else 1})); give one class index per sample"
            + (" (one-hot labels: labels.argmax(-1); for a multi-label model, an independent 0/1 label per "
               "output, pass --loss binary_cross_entropy)" if labels == output else
               " (one-hot labels: labels.argmax(-1))" if len(labels) == 1 else ""))
    grid = ", ".join(map(str, positions))
    if all(d == 1 for d in positions) and not labels:
        raise PrunedropError(
            f"the model returns (N, {output[0]}, {grid}) and the labels are one class per sample: flatten the "
            f"model's output to (N, {output[0]}) in its forward (torch.flatten(x, 1)), and pass that as --arch")
    raise PrunedropError(
        f"the model predicts per position (outputs (N, {output[0]}, {grid}): {output[0]} classes at each of "
        f"({grid})), so the labels must be one class per position, shaped (N, {grid}); the data's are shaped {shown}")


def _check_training_output(model: Any, x: Any, dims: int = 2) -> None:
    """One line, before any file, for a model that returns something else than a tensor in training mode: as
    torchvision's GoogLeNet and Inception3 (``aux_logits``) return their main and auxiliary logits, a model that
    answered the eval-mode check with a tensor failed at the first training step with a traceback. The buffers
    (BatchNorm statistics, a spectral norm's vectors), the random state and the modes are left as they were; a
    forward that fails here is left to training to report. ``dims``: the eval-mode output's number of axes."""
    try:
        with untouched(model):
            out = model.train()(x)
    except Exception:  # noqa: BLE001 - the eval-mode pass worked; training says what fails, if anything does
        return
    allowed = {1, 2} if dims <= 2 else {dims}  # (batch,) and (batch, C) alike, as before; per position, its axes
    if not isinstance(out, torch.Tensor) or out.dim() not in allowed or out.shape[0] != x.shape[0]:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise PrunedropError(
            f"in training mode the model returns {got}, not the (batch, classes) tensor it returns in eval mode (as "
            "torchvision's GoogLeNet and Inception3 return auxiliary logits); prunedrop trains on one tensor: build "
            "the model without the auxiliary outputs (aux_logits=False), or return the logits alone")


def output_shape_on(model: Any, x: Any, *, what: str = "the data's inputs") -> tuple[int, ...]:
    """The model's output shape per sample on the batch ``x`` (``what`` the error calls it): () for one value per
    sample ((batch,) outputs), (C,) for a (batch, C) tensor, (C, *S) for a model that predicts per position (a
    segmentation's (C, H, W))."""
    check_model_structure(model, "the model")
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except PrunedropError:  # a check inside the model's run (a token id beyond an embedding) says it in full
        raise
    except Exception as e:  # the user's model rejecting the user's data: say what did not fit
        inputs = str(x.dtype).removeprefix("torch.")
        dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.is_floating_point()})
        if isinstance(e, TypeError) and "required positional argument" in str(e):
            hint = ("; prunedrop feeds the model one input tensor: wrap it in a module whose forward(self, x) returns "
                    "self.model(x, ...) with the other arguments fixed, and pass that as --arch")
        elif dtypes in ([], [inputs]):
            hint = ""
        elif not x.is_floating_point() and not x.is_complex() and "type" in str(e).lower():  # not ids out of range
            hint = (f"; the inputs are {inputs} and the model's parameters {', '.join(dtypes)}: give float inputs, "
                    "scaled as the model was trained on them (e.g. x.float() / 255 for 8-bit images)")
        elif x.is_floating_point() and dtypes == ["float32"]:  # the model is as prunedrop wants it: the inputs are not
            hint = (f"; the inputs are {inputs} and the model's parameters float32: give float32 inputs (x.float() "
                    "in the data function, x.astype(np.float32) for NumPy arrays)")
        elif dtypes == ["float32"]:
            # whole-number inputs (token ids) and a float32 model: the error is no dtype's (a sentence longer than
            # the position embedding read "give prunedrop a float32 model" to a float32 model)
            hint = ""
        else:
            hint = (f"; the model's parameters are {', '.join(dtypes)}, the inputs {inputs}: give prunedrop a float32 "
                    "model (model.float() before saving it; with --arch, the factory's model must be float32 too: a "
                    f"{dtypes[0]} state dict loads into it)")
        raise PrunedropError(
            f"the model cannot run on {what} of shape {tuple(x.shape[1:])} (per sample): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}{hint}") from None
    # (batch,): one value per sample, as a regression or one-logit model that squeezes its last axis returns;
    # (batch, C, *S): a prediction per position (labels are checked against it by check_label_shape)
    if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != x.shape[0] or out.numel() == 0:
        raise PrunedropError(f"the model must return a (batch, classes) tensor; it returned {_described(out)}"
                             + ("" if isinstance(out, torch.Tensor) else
                                ": wrap it in a module whose forward returns the logits alone (e.g. "
                                "model(x)['logits'] or model(x)[0]; a torchvision segmentation model's "
                                "model(x)['out']) and pass that as --arch"))
    check_deterministic(model, x, first=out)
    return tuple(int(d) for d in out.shape[1:])


def _described(out: Any, depth: int = 0) -> str:
    """What a model returned, for a one-line error: a tensor's shape, a dict's keys with what they hold, a
    tuple's parts (a Hugging Face ``ModelOutput`` is a dict: its ``logits`` are named)."""
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    name = type(out).__name__
    if depth == 0 and isinstance(out, dict):
        parts = [f"{k!s}: {_described(v, 1)}" for k, v in list(out.items())[:4]]
        return f"{name} {{{', '.join(parts)}{', ...' if len(out) > 4 else ''}}}"
    if depth == 0 and isinstance(out, (tuple, list)):
        parts = [_described(v, 1) for v in out[:4]]
        return f"a {name} of {len(out)} ({', '.join(parts)}{', ...' if len(out) > 4 else ''})"
    return name

"""What several stages share: the parity sample count, evaluation on every split, the plot drawing of a run folder,
one-line name lists, and the merge of the stages' report parts."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DataBundle
from ..errors import PrunedropError
from ..metrics import sample_scores, scores_metric
from ..recipes import Recipe
from ..runfolder import RunFolder

#: samples of the example batch that the parity checks run on
PARITY_SAMPLES = 256


def some(names: list[str], shown: int = 6) -> str:
    """The first ``shown`` names, comma-separated, and ", ..." when there are more (for one-line logs)."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def evaluate_all(model: nn.Module, data: DataBundle, recipe: Recipe, device: torch.device) -> dict[str, float]:
    """The recipe's metric on the validation split (``val``) and, where the data has one, the test split."""
    return measure_all(model, data, recipe, device)[0]


def measure_all(model: nn.Module, data: DataBundle, recipe: Recipe, device: torch.device
                ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """:func:`evaluate_all`'s metric per split, and the per-sample scores it is the mean of
    (:func:`prunedrop.metrics.sample_scores`), for the paired standard error of a change between two models."""
    splits = ["val"] + (["test"] if data.test is not None else [])
    scores = {split: sample_scores(model, data.loader(split, recipe.eval_batch_size), loss=recipe.loss,
                                   device=device) for split in splits}
    return {split: scores_metric(s) for split, s in scores.items()}, scores


def draw_plots(folder: RunFolder, drawings: dict[str, Callable[[Path], Any]],
               log: Callable[[str], None]) -> tuple[dict[str, str], str | None]:
    """Draw each plot into the folder's plots/KEY.png: (key → relative path, None), or what stopped them (a missing
    matplotlib skips the plots instead of failing the run)."""
    plots: dict[str, str] = {}
    for key, draw in drawings.items():
        relative = folder.plot(key)
        try:
            draw(folder.path / relative)
        except PrunedropError as e:
            log(f"plots skipped: {e.message}")
            return plots, e.message
        plots[key] = relative
    return plots, None


def merge_parts(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The report parts of the stages (each result's ``to_dict()``), in stage order, as one dict: a key two stages
    share holds a dict (merged; a later stage's entry wins) or a list (concatenated)."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key in out and isinstance(out[key], dict) and isinstance(value, Mapping):
                out[key] = {**out[key], **value}
            elif key in out and isinstance(out[key], list) and isinstance(value, list):
                out[key] = [*out[key], *value]
            else:
                out[key] = value
    return out

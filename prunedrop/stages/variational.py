"""Stage 2, fine-tune: the variational training (:func:`prunedrop.train.finetune`, with the autopilot choosing β
unless the recipe fixes it), checkpointed to the run folder so that ``--resume`` continues it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data import DataBundle
from ..recipes import Recipe
from ..runfolder import RunFolder
from ..train import TrainResult, finetune
from .conversion import Converted


@dataclass
class VariationalFinetune:
    """What the variational fine-tuning did (the model is trained in place: :attr:`Converted.model`)."""

    train: TrainResult
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"history": list(self.train.history),
                **({"autopilot": self.train.autopilot} if self.train.autopilot is not None else {}),
                "variational_epochs": self.train.epochs, "timings": self.timings}


def finetune_variational(converted: Converted, data: DataBundle, recipe: Recipe, device: torch.device,
                         folder: RunFolder, *, resume: bool, progress: bool,
                         log: Callable[[str], None]) -> VariationalFinetune:
    """Train the variational model (``resume``: from the folder's checkpoint) and log where the autopilot left β."""
    t0 = time.perf_counter()
    trained = finetune(converted.model, data, recipe, device=device, checkpoint_path=folder.variational_checkpoint,
                       resume=resume, progress=progress, log=log)
    timings = {"finetune_s": time.perf_counter() - t0}
    if trained.autopilot is not None:
        log(autopilot_line(trained.autopilot))
    return VariationalFinetune(train=trained, timings=timings)


def autopilot_line(summary: dict[str, Any]) -> str:
    """One line on where the autopilot left β and why."""
    last = summary.get("last_check") or {}
    parts = [f"autopilot: β ended at {summary['beta_final']:.3g}"]
    if last.get("smoothed_drop") is not None:
        parts.append(f"validation drop {last['smoothed_drop']:.2f} (budget {summary['max_metric_drop']:g}, "
                     f"aiming at {summary.get('aim') or summary['margin'] * summary['max_metric_drop']:.2f} while "
                     "training)")
    if last.get("cost_ratio") is not None:
        parts.append(f"{last['cost_ratio']:.3g}x smaller ({summary['target']})")
    if last.get("kept_fraction") is not None:
        parts.append(f"kept fraction {last['kept_fraction']:.4g}")
    if summary.get("stopped_early"):
        parts.append("stopped early (settled)")
    elif summary["bound"] == "none":
        ceiling, ratio = summary.get("target_ceiling"), summary.get("target_ratio")
        parts.append("β still rising when training ended (" + (
            f"the target is beyond reach, at most {ceiling:.3g}x)" if ceiling is not None and ratio is not None
            and ratio > ceiling else "more epochs would compress more)"))
    if summary["bound"] != "none":
        parts.append(f"bound by the {summary['bound']}")
    restarts = summary.get("restarts") or []
    if summary.get("overfit_backoffs"):
        parts.append(f"the weights' learning rate × {summary.get('lr_scale', 1.0):g} (training at the larger rate "
                     "overfitted the model" + (f"; started again from the given weights at step "
                                               f"{', '.join(str(s) for s in restarts)})" if restarts else ")"))
    rewound = summary.get("rewound")
    if rewound:  # the last check describes where the phase ended, not the state it went back to
        parts.append(f"then back to its state at step {rewound['back_to']} (within the budget)")
    return ", ".join(parts)

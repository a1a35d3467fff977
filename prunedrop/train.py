"""Fine-tuning: the variational ELBO, schedules, progress bars, checkpoints and resume.

Two phases share one loop:

* ``variational``: ``loss = mean(CE) + β·ΣKL / N`` (the ELBO ``N·mean(CE) + β·ΣKL`` divided by the
  training-set size N, so learning rates keep their usual scale); β warms up linearly from 0 to
  ``kl_weight``; the noise parameters get their own learning rate.
* ``masked``: after thresholding, the surviving weights of a deterministic model are trained without
  noise while pruned weights stay exactly zero (this recovers accuracy).

A checkpoint holds model, optimizer, scheduler, RNG state, history and the position in the epoch. The
data order of every epoch comes from (seed, epoch), so a resumed run replays exactly what an
uninterrupted one would have done: on CPU with a fixed seed the final weights are identical.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .convert import variational_layers
from .data import DataBundle
from .errors import PrunedropError, TrainingError
from .io import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from .recipes import Recipe


class TrainingInterrupted(PrunedropError):
    """Ctrl-C or SIGTERM stopped fine-tuning after a checkpoint was written."""

    exit_code = 130


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PrunedropError(f"device {spec!r} was asked for but this PyTorch sees no CUDA GPU; use --device cpu")
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PrunedropError(f"device {spec!r} does not exist: {torch.cuda.device_count()} CUDA device(s) found")
        return device
    if spec == "cpu":
        return torch.device("cpu")
    raise PrunedropError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")


def data_loss(loss: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The data term: mean cross-entropy, or mean squared error for regression."""
    if loss == "cross_entropy":
        return F.cross_entropy(output, target)
    if loss == "mse":
        return F.mse_loss(output, target.to(output.dtype).reshape(output.shape))
    raise PrunedropError(f"unknown loss {loss!r}")


def metric_name(loss: str) -> str:
    return "accuracy" if loss == "cross_entropy" else "mse"


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, *, loss: str = "cross_entropy",
             device: torch.device | str = "cpu") -> dict[str, float]:
    """Mean loss and the metric (accuracy in %, or mean squared error) of ``model`` in eval mode."""
    was_training = model.training
    model.eval()
    total, loss_sum, correct, sq_err = 0, 0.0, 0, 0.0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        out = model(x)
        n = y.shape[0]
        loss_sum += float(data_loss(loss, out, y)) * n
        if loss == "cross_entropy":
            correct += int((out.argmax(dim=1) == y).sum())
        else:
            sq_err += float(F.mse_loss(out, y.to(out.dtype).reshape(out.shape), reduction="sum"))
        total += n
    model.train(was_training)
    if total == 0:
        raise PrunedropError("the evaluation data is empty")
    metric = 100.0 * correct / total if loss == "cross_entropy" else sq_err / total
    return {"loss": loss_sum / total, metric_name(loss): metric}


def kept_fraction(model: nn.Module) -> float:
    """Share of the variational layers' weights that the current thresholds keep."""
    kept, total = 0, 0
    with torch.no_grad():
        for layer in variational_layers(model).values():
            mask = layer.keep_mask()
            kept += int(mask.sum())
            total += mask.numel()
    return kept / total if total else 1.0


def total_kl(model: nn.Module) -> torch.Tensor:
    layers = list(variational_layers(model).values())
    if not layers:
        raise PrunedropError("the model has no variational layer; convert it with to_variational first")
    return torch.stack([layer.kl() for layer in layers]).sum()


def _lr_lambda(schedule: str, total_steps: int) -> Callable[[int], float]:
    total_steps = max(total_steps, 1)
    if schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    if schedule == "linear":
        return lambda step: max(0.0, 1.0 - step / total_steps)
    return lambda step: 1.0


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: tuple[int, int] | None = None
    """(epoch, batch) a resumed run continued from."""


class _StopRequests:
    """Ctrl-C and SIGTERM set a flag that the loop checks between batches.

    Stopping only at a batch boundary keeps the checkpoint exact: the optimizer step of the batch in
    flight is either fully in it or not at all. A second Ctrl-C stops at once (KeyboardInterrupt).
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _StopRequests:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: signals cannot be handled here
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _run(
    model: nn.Module,
    data: DataBundle,
    recipe: Recipe,
    *,
    phase: str,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    step_loss: Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, dict[str, float]]],
    after_step: Callable[[], None] | None,
    device: torch.device,
    checkpoint_path: Path | None,
    resume: bool,
    progress: bool,
    epoch_stats: Callable[[], dict[str, float]],
) -> TrainResult:
    from tqdm.auto import tqdm

    steps_per_epoch = len(data.loader("train", recipe.batch_size, shuffle=True, seed=recipe.seed, epoch=0))
    if steps_per_epoch == 0:
        raise PrunedropError("the training data is empty")
    lr_schedule = recipe.lr_schedule if phase == "variational" else "cosine"
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(lr_schedule, epochs * steps_per_epoch))
    result = TrainResult()
    start_epoch, start_batch, step = 0, 0, 0

    partial: dict[str, Any] = {"sums": {}, "seen": 0}

    def checkpoint(epoch: int, batch: int) -> None:
        if checkpoint_path is None:
            return
        save_checkpoint({
            "phase": phase,
            "epoch": epoch,
            "batch": batch,
            "partial": partial if batch else {"sums": {}, "seen": 0},
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": capture_rng_state(),
            "history": result.history,
            "recipe": recipe.to_dict(),
        }, checkpoint_path)

    if resume and checkpoint_path is not None and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        if state.get("phase") != phase:
            raise PrunedropError(f"checkpoint {checkpoint_path.name} is of phase {state.get('phase')!r}, not {phase!r}")
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise PrunedropError(
                f"checkpoint {checkpoint_path.name} does not fit this model ({str(e).splitlines()[0]}); "
                "resume with the same model, recipe and data, or start afresh without --resume"
            ) from None
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        start_epoch, start_batch, step = int(state["epoch"]), int(state["batch"]), int(state["step"])
        result.history = list(state["history"])
        partial = dict(state.get("partial") or {"sums": {}, "seen": 0})
        result.resumed_from = (start_epoch, start_batch)

    def stop(epoch: int, batch: int) -> None:
        checkpoint(epoch, batch)
        where = f" to {checkpoint_path.name}" if checkpoint_path else ""
        raise TrainingInterrupted(
            f"interrupted during {phase} epoch {epoch + 1}, after batch {batch}; checkpoint saved{where}; "
            "run the same command again with --resume to continue"
        )

    model.to(device)
    with _StopRequests() as stop_requests:
        for epoch in range(start_epoch, epochs):
            model.train()
            t0 = time.perf_counter()
            loader = data.loader("train", recipe.batch_size, shuffle=True, seed=recipe.seed, epoch=epoch)
            # running means of this epoch; a resumed epoch continues those of the interrupted one
            resumed = epoch == start_epoch and start_batch > 0
            sums: dict[str, float] = dict(partial["sums"]) if resumed else {}
            seen = int(partial["seen"]) if resumed else 0
            bar = tqdm(total=steps_per_epoch, desc=f"{phase} {epoch + 1}/{epochs}", disable=None if progress else True,
                       leave=False, dynamic_ncols=True)
            skip = start_batch if epoch == start_epoch else 0
            for batch_index, (x, y) in enumerate(loader):
                if batch_index < skip:  # replaying a resumed epoch: same order, these are done
                    bar.update(1)
                    continue
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                loss, parts = step_loss(x, y, step)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"the {phase} loss became {loss.item()} at epoch {epoch + 1}, batch {batch_index + 1}"
                        f"{'; the last good checkpoint is ' + checkpoint_path.name if checkpoint_path else ''}"
                        f"; lower the learning rate (now {optimizer.param_groups[0]['lr']:.3g}, e.g. --lr "
                        f"{recipe.lr / 10:g}) or set grad_clip in the recipe"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if recipe.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                optimizer.step()
                scheduler.step()
                if after_step is not None:
                    after_step()
                step += 1
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                seen += 1
                bar.update(1)
                if stop_requests.requested:
                    partial = {"sums": sums, "seen": seen}
                    bar.close()
                    stop(epoch, batch_index + 1)
                if seen % 10 == 0:
                    bar.set_postfix({k: f"{v / seen:.4g}" for k, v in sums.items()}, refresh=False)
            bar.close()
            record: dict[str, Any] = {"phase": phase, "epoch": epoch + 1}
            record.update({k: v / max(seen, 1) for k, v in sums.items()})
            record["lr"] = optimizer.param_groups[0]["lr"]
            val = evaluate(model, data.loader("val", recipe.eval_batch_size), loss=recipe.loss, device=device)
            record.update({f"val_{k}": v for k, v in val.items()})
            record.update(epoch_stats())
            record["seconds"] = time.perf_counter() - t0
            result.history.append(record)
            if progress:
                shown = {k: v for k, v in record.items() if k not in ("phase", "epoch", "lr")}
                tqdm.write(f"{phase} epoch {epoch + 1}/{epochs}: "
                           + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
            checkpoint(epoch + 1, 0)
            if stop_requests.requested and epoch + 1 < epochs:
                stop(epoch + 1, 0)
    return result


def finetune(
    model: nn.Module,
    data: DataBundle,
    recipe: Recipe,
    *,
    device: torch.device | str = "cpu",
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train a variational model (see :func:`prunedrop.convert.to_variational`) on the ELBO."""
    device = torch.device(device)
    layers = variational_layers(model)
    if not layers:
        raise PrunedropError("the model has no variational layer; convert it with to_variational first")
    model.to(device)
    noise = {id(p) for layer in layers.values() for p in layer.noise_parameters()}
    weights = [p for p in model.parameters() if id(p) not in noise and p.requires_grad]
    noise_params = [p for p in model.parameters() if id(p) in noise]
    optimizer = torch.optim.Adam([
        {"params": weights, "lr": recipe.lr, "weight_decay": recipe.weight_decay},
        {"params": noise_params, "lr": recipe.noise_lr or recipe.lr, "weight_decay": 0.0},
    ])
    n = data.num_train
    steps_per_epoch = max(1, math.ceil(n / recipe.batch_size))
    warmup_steps = recipe.kl_warmup_epochs * steps_per_epoch

    def step_loss(x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        beta = recipe.kl_weight * (min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0)
        data_term = data_loss(recipe.loss, model(x), y)
        kl = total_kl(model)
        loss = data_term + beta * kl / n
        return loss, {"loss": loss.item(), "data_loss": data_term.item(), "kl": kl.item(), "beta": beta}

    return _run(model, data, recipe, phase="variational", epochs=recipe.epochs, optimizer=optimizer,
                step_loss=step_loss, after_step=None, device=device,
                checkpoint_path=Path(checkpoint_path) if checkpoint_path else None, resume=resume,
                progress=progress, epoch_stats=lambda: {"kept_fraction": kept_fraction(model)})


def finetune_masked(
    model: nn.Module,
    masks: dict[str, torch.Tensor],
    data: DataBundle,
    recipe: Recipe,
    *,
    device: torch.device | str = "cpu",
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train the surviving weights of a deterministic model; ``masks`` (parameter name → keep) stay applied."""
    device = torch.device(device)
    model.to(device)
    params = dict(model.named_parameters())
    missing = set(masks) - set(params)
    if missing:
        raise PrunedropError(f"masks name parameters the model does not have: {', '.join(sorted(missing))}")
    pairs = [(params[name], mask.to(device=device, dtype=params[name].dtype)) for name, mask in masks.items()]
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.finetune_lr)

    def apply_masks() -> None:
        with torch.no_grad():
            for p, mask in pairs:
                p.mul_(mask)

    apply_masks()

    def step_loss(x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        loss = data_loss(recipe.loss, model(x), y)
        return loss, {"loss": loss.item()}

    def nonzero_fraction() -> dict[str, float]:
        kept = sum(int((p != 0).sum()) for p, _ in pairs)
        total = sum(p.numel() for p, _ in pairs)
        return {"kept_fraction": kept / total if total else 1.0}

    return _run(model, data, recipe, phase="masked", epochs=recipe.finetune_epochs, optimizer=optimizer,
                step_loss=step_loss, after_step=apply_masks, device=device,
                checkpoint_path=Path(checkpoint_path) if checkpoint_path else None, resume=resume,
                progress=progress, epoch_stats=nonzero_fraction)

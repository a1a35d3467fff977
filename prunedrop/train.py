"""Fine-tuning: the variational ELBO, schedules, progress bars, checkpoints and resume.

(Over 500 lines on purpose: the one loop both phases share, its exact checkpoint/resume and its data-parallel
sharding hold one piece of state between them; the autopilot's wiring is in :mod:`prunedrop.pilot`, the loss and
metrics in :mod:`prunedrop.metrics`.)

Two phases share one loop:

* ``variational``: ``loss = mean(CE) + β·ΣKL / N`` (the ELBO ``N·mean(CE) + β·ΣKL`` divided by the
  training-set size N, so learning rates keep their usual scale); β warms up linearly from 0 to
  ``kl_weight``; the noise parameters get their own learning rate.
* ``masked``: after thresholding, the surviving weights of a deterministic model are trained without
  noise while pruned weights stay exactly zero (this recovers accuracy).

A checkpoint holds model, optimizer, scheduler, RNG state, history and the position in the epoch. The
data order of every epoch comes from (seed, epoch), so a resumed run replays exactly what an
uninterrupted one would have done: on CPU with a fixed seed the final weights are identical.

Scale (see DESIGN.md and BENCHMARKS.md, "Training-step overhead"):

* ``compile``: the elementwise work of the sparse VD layers (log α, the variance weights, the KL, the
  output noise) runs through ``torch.compile``-fused kernels (:class:`prunedrop.layers.sparse_vd.Kernels`);
  the KL comes out of the same pass as the variance, so log α is computed once a step. A compiler failure
  (no C++ compiler, no triton) warns in one line and training goes on eagerly.
* ``precision``: bf16/fp16 autocast for the forward; log α, the KL and the noise stay in float32. fp16 (CUDA
  only) uses a gradient scaler.
* data parallel: under ``torchrun`` (see :mod:`prunedrop.distributed`) the model is wrapped in
  DistributedDataParallel and each rank takes its contiguous share of every global batch of ``batch_size``;
  the data term is weighted by the share so that the averaged gradient is exactly the global batch's. Only
  rank 0 writes checkpoints; the checkpoint holds every rank's RNG state so that resume stays exact.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import autopilot, distributed
from .batchnorm import recalibrate_from
from .compare import output_tensors
from .convert import variational_layers
from .data import DataBundle
from .errors import PrunedropError, TrainingError
from .layers.lognormal import LogNormal, total_kl
from .layers.sparse_vd import Kernels, SparseVD, fused_kernels
from .metrics import data_loss, evaluate, kept_fraction, metric_name  # noqa: F401 (public here too)
from .modes import dense_gradients
from .pilot import Pilot, variational_adam
from .recipes import Recipe
from .safety import CHECKPOINT_KEYS
from .storage import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    strip_wrapper_prefix,
)

PRECISIONS = ("fp32", "bf16", "fp16")
COMPILE_MODES = ("auto", "always", "never")
#: ``compile: auto`` compiles when (sparse VD weights) × (training steps) reaches this: compiling costs
#: seconds to a minute, fusing saves a little time per weight and step (measured in BENCHMARKS.md,
#: "Training-step overhead")
AUTO_COMPILE_WEIGHT_STEPS = 1e9


class TrainingInterrupted(PrunedropError):
    """Ctrl-C or SIGTERM stopped fine-tuning after a checkpoint was written."""

    exit_code = 130



def state_mismatch(wanted: Mapping[str, Any], saved: Mapping[str, Any], shown: int = 4) -> str:
    """What keeps the state dict ``saved`` from loading into a model whose own is ``wanted``, in a few words: the
    entries it lacks and has beyond the model's, and those of another shape; a layer whose noise the checkpoint lacks
    while it holds the layer's weight is named as converted now and dense then (a recipe or a prunedrop version
    that converts more layer types than the run's)."""
    def listed(keys: list[str]) -> str:
        return ", ".join(keys[:shown]) + (f" (+{len(keys) - shown} more)" if len(keys) > shown else "")

    missing = [k for k in wanted if k not in saved]
    extra = [k for k in saved if k not in wanted]
    reshaped = [k for k in wanted if k in saved and hasattr(saved[k], "shape") and hasattr(wanted[k], "shape")
                and tuple(saved[k].shape) != tuple(wanted[k].shape)]
    parts = []
    if missing:
        layers = list(dict.fromkeys(k.rpartition(".")[0] for k in missing))
        dense_then = [layer for layer in layers if f"{layer}.weight" in saved]
        parts.append(f"it lacks {listed(missing)}"
                     + (f": {listed(dense_then)} converted now, dense in the checkpoint's run" if dense_then else ""))
    if extra:
        parts.append(f"it has {listed(extra)} beyond the model's")
    if reshaped:
        parts.append(f"{listed(reshaped)} of another shape")
    return "; ".join(parts) or "the entries differ"

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


def kl_factors(model: nn.Module, kl_weights: dict[str, float] | None = None) -> dict[str, float]:
    """Layer name → its KL factor: the first glob of ``kl_weights`` that matches the name, else 1."""
    import fnmatch

    factors = {}
    for name in variational_layers(model):
        factors[name] = next((float(f) for pattern, f in (kl_weights or {}).items()
                              if fnmatch.fnmatchcase(name, pattern)), 1.0)
    return factors


def training_kl(layers: list[nn.Module], factors: list[float] | None = None) -> torch.Tensor:
    """Σ factor·KL for the step whose forward just ran: per layer the value a fused forward computed
    alongside the variance when there is one (taken, so it is never reused), else ``layer.kl()``."""
    parts = []
    factors = factors or [1.0] * len(layers)
    # the log-normal (SBP) layers' KLs in one pass: per layer it is hundreds of tiny kernels (see total_kl)
    lognormal = [i for i, layer in enumerate(layers) if type(layer).kl is LogNormal.kl]
    if len(lognormal) > 1:
        parts.append(total_kl([layers[i] for i in lognormal], [factors[i] for i in lognormal]))
        keep = set(range(len(layers))) - set(lognormal)
        layers, factors = [layers[i] for i in sorted(keep)], [factors[i] for i in sorted(keep)]
    for layer, factor in zip(layers, factors, strict=True):
        cached = getattr(layer, "_step_kl", None)
        if cached is not None:
            layer._step_kl = None
        kl = cached if cached is not None else layer.kl()
        parts.append(kl if factor == 1.0 else kl * factor)
    return torch.stack(parts).sum()


def check_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None for fp32); a PrunedropError where it cannot run."""
    if precision not in PRECISIONS:
        raise PrunedropError(f"unknown precision {precision!r}; use fp32, bf16 or fp16")
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise PrunedropError("precision fp16 needs a CUDA device (CPU autocast has no fp16 training); "
                             "use precision bf16 or fp32 on the CPU")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise PrunedropError(f"this GPU ({torch.cuda.get_device_name(device)}) does not support bf16; "
                             "use precision fp16 or fp32")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def compiled_kernels(device: torch.device, clip: float = 10.0) -> Kernels | None:
    """The sparse VD kernels compiled with ``torch.compile``, or None (with a one-line warning) when
    compiling fails here. A forward and backward on a small input compile them now (shapes are dynamic,
    so one compilation serves every layer), so that a missing compiler shows before training starts."""
    try:
        kernels = fused_kernels(lambda f: torch.compile(f, dynamic=True, fullgraph=True))
        fused_terms, fused_noise = kernels.noise_terms, kernels.apply_noise
        w = torch.randn(64, device=device, requires_grad=True)
        s2 = torch.full((64,), -10.0, device=device, requires_grad=True)
        var_weight, kl = fused_terms(w, s2, clip)
        mu = torch.randn(64, device=device, requires_grad=True)
        out = fused_noise(mu, var_weight, torch.randn(64, device=device))
        (out.sum() + kl).backward()
    except Exception as e:  # any compiler failure: the eager code computes the same thing
        first = (str(e).strip().splitlines() or [""])[0][:200]
        warnings.warn(f"torch.compile is not usable here ({type(e).__name__}: {first}); training eagerly",
                      RuntimeWarning, stacklevel=2)
        return None
    return kernels


def _choose_kernels(mode: str, layers: list[nn.Module], total_steps: int, device: torch.device) -> Kernels | None:
    if mode not in COMPILE_MODES:
        raise PrunedropError(f"unknown compile mode {mode!r}; use auto, always or never")
    svd = [layer for layer in layers if isinstance(layer, SparseVD)]
    if not svd or mode == "never":
        return None
    if mode == "auto" and sum(layer.weight.numel() for layer in svd) * total_steps < AUTO_COMPILE_WEIGHT_STEPS:
        return None
    return compiled_kernels(device, clip=svd[0].log_alpha_clip)


@contextlib.contextmanager
def kernels_set(layers: list[nn.Module], kernels: Kernels | None) -> Iterator[None]:
    """Hand ``kernels`` to the sparse VD layers for the duration of training, and take them back."""
    svd = [layer for layer in layers if isinstance(layer, SparseVD)] if kernels is not None else []
    for layer in svd:
        layer._kernels = kernels
    try:
        yield
    finally:
        for layer in svd:
            layer.__dict__.pop("_kernels", None)
            layer.__dict__.pop("_step_kl", None)


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
    autopilot: dict[str, Any] | None = None
    """The autopilot's summary (:meth:`prunedrop.autopilot.Autopilot.summary`) when it chose β."""
    epochs: int | None = None
    """Epochs the phase was planned for (the recipe's, or the automatic number)."""


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


StepLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, int, float, Callable[[], Any]],
                   tuple[torch.Tensor, dict[str, float]]]
"""``step_loss(net, x, y, step, share, autocast)``: ``net`` is the model (or its DDP wrapper) to call,
``share`` the weight of this rank's data term (1 in a single process), ``autocast()`` the context in which
the forward runs."""


def _shard_batches(data: DataBundle, batch_size: int, seed: int, epoch: int, world: int, rank: int
                   ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, float]]:
    """This rank's share of every global batch of the epoch: ``(batch index, x, y, share)``.

    The global batches are those of ``data.loader`` (the (seed, epoch) permutation, ``batch_size`` each);
    rank r takes the r-th of ``world`` contiguous, near-equal parts of each. ``share`` = local size × world /
    global size, so that the DDP average of ``share``·mean(local loss) is the global batch's mean loss even
    when the parts differ by one. A global batch smaller than ``world`` (only ever the last) is skipped.
    """
    from torch.utils.data import DataLoader

    dataset = data.split("train")
    if isinstance(dataset, DataLoader):
        raise PrunedropError("distributed fine-tuning needs a map-style training Dataset to shard, not a "
                             "DataLoader; return datasets from the python: data function, or run one process")
    loader = data.loader("train", batch_size, shuffle=True, seed=seed, epoch=epoch)
    for index, batch in enumerate(loader.batch_sampler):
        batch = list(batch)
        n = len(batch)
        if n < world:
            continue
        base, extra = divmod(n, world)
        start = rank * base + min(rank, extra)
        mine = batch[start:start + base + (1 if rank < extra else 0)]
        x, y = loader.collate_fn([dataset[i] for i in mine])
        yield index, x, y, len(mine) * world / n


def _rank_seed(seed: int, rank: int, epoch: int, batch: int) -> int:
    """The noise seed of a rank > 0 (rank 0 keeps the single-process stream)."""
    return (seed * 1_000_003 + rank * 7_919 + epoch * 104_729 + batch) % (2**63)


def _run(
    model: nn.Module,
    data: DataBundle,
    recipe: Recipe,
    *,
    phase: str,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    step_loss: StepLoss,
    after_step: Callable[[], None] | None,
    device: torch.device,
    checkpoint_path: Path | None,
    resume: bool,
    progress: bool,
    epoch_stats: Callable[[], dict[str, float]],
    precision: str = "fp32",
    parallel: bool = False,
    on_step: Callable[[int], None] | None = None,
    should_stop: Callable[[dict[str, Any]], str | None] | None = None,
    extra_state: tuple[Callable[[], Any], Callable[[Any], None]] | None = None,
    lr_scale: Callable[[], float] | None = None,
) -> TrainResult:
    """The loop both phases share. ``on_step(step)`` runs after every optimizer step (``step`` counts from 1);
    ``should_stop(record)`` after every epoch but the last, given the epoch's history record (its validation metric):
    a message ends the phase there (and, on resume, before the next epoch); a later call without it continues from
    that epoch's checkpoint to the end of the schedule;
    ``extra_state`` = (get, set) of state that the checkpoint carries besides model and optimizer."""
    from tqdm.auto import tqdm

    world, rank = (distributed.world_size(), distributed.rank()) if parallel else (1, 0)
    main = rank == 0
    steps_per_epoch = len(data.loader("train", recipe.batch_size, shuffle=True, seed=recipe.seed, epoch=0))
    if steps_per_epoch == 0:
        raise PrunedropError("the training data is empty")
    amp_dtype = check_precision(precision, device)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def autocast() -> Any:
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    lr_schedule = recipe.lr_schedule if phase == "variational" else "cosine"
    schedule = _lr_lambda(lr_schedule, epochs * steps_per_epoch)
    if phase == "variational" and recipe.automatic and len(optimizer.param_groups) == 2 and lr_scale is not None:
        # the autopilot steers through the noise: its learning rate stays, so that β keeps its authority to the end;
        # the weights' follows the schedule and the autopilot's learning-rate back-off
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [lambda s: schedule(s) * lr_scale(),
                                                                  _lr_lambda("constant", 1)])
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    result = TrainResult()
    start_epoch, start_batch, step = 0, 0, 0

    partial: dict[str, Any] = {"sums": {}, "seen": 0}

    def checkpoint(epoch: int, batch: int) -> None:
        if checkpoint_path is None:
            return
        rng_ranks = distributed.gather_objects(capture_rng_state()) if world > 1 else None  # a collective
        if not main:
            return
        state = {
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
        }
        if extra_state is not None:
            state["extra"] = extra_state[0]()
        if scaler is not None:
            state["grad_scaler"] = scaler.state_dict()
        if rng_ranks is not None:
            state["rng_ranks"] = rng_ranks
        save_checkpoint(state, checkpoint_path)

    state: dict[str, Any] = {}
    if resume and checkpoint_path is not None and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, require=CHECKPOINT_KEYS)
        if state.get("phase") != phase:
            raise PrunedropError(f"checkpoint {checkpoint_path.name} is of phase {state.get('phase')!r}, not {phase!r}")
        state["model"] = strip_wrapper_prefix(state["model"], model)  # an earlier run's compiled submodule's keys
        try:
            model.load_state_dict(state["model"])
        except RuntimeError:
            raise PrunedropError(
                f"checkpoint {checkpoint_path.name} does not fit this model ({state_mismatch(model.state_dict(), state['model'])}); "
                "resume with the same model, recipe and data, or start afresh without --resume"
            ) from None
        try:  # a checkpoint with missing or edited entries: one line, not a traceback
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if scaler is not None and "grad_scaler" in state:
                scaler.load_state_dict(state["grad_scaler"])
            restore_rng_state(state["rng"])
            if extra_state is not None and state.get("extra") is not None:
                extra_state[1](state["extra"])
            start_epoch, start_batch, step = int(state["epoch"]), int(state["batch"]), int(state["step"])
            result.history = list(state["history"])
        except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as e:
            raise PrunedropError(
                f"checkpoint {checkpoint_path.name} is incomplete or edited ({type(e).__name__}: "
                f"{' '.join(str(e).split())[:100]}); start afresh without --resume, or with another -o") from None
        partial = dict(state.get("partial") or {"sums": {}, "seen": 0})
        result.resumed_from = (start_epoch, start_batch)
    if world > 1 and rank > 0:
        # each rank its own noise stream; a resumed run continues the saved one of this rank
        saved = state.get("rng_ranks")
        if saved is not None and len(saved) == world:
            restore_rng_state(saved[rank])
        else:
            torch.manual_seed(_rank_seed(recipe.seed, rank, start_epoch, start_batch))

    def stop(epoch: int, batch: int) -> None:
        checkpoint(epoch, batch)
        if world > 1:
            distributed.barrier()
        if checkpoint_path is None:  # a direct call without a checkpoint: nothing to resume from
            raise TrainingInterrupted(f"interrupted during {phase} epoch {epoch + 1}, after batch {batch}; no "
                                      "checkpoint was written (no checkpoint_path), so the training starts afresh")
        raise TrainingInterrupted(
            f"interrupted during {phase} epoch {epoch + 1}, after batch {batch}; checkpoint saved to "
            f"{checkpoint_path.name}; run the same command again with --resume to continue"
        )

    def reduce_sums(sums: dict[str, float]) -> dict[str, float]:
        if world == 1:
            return sums
        keys = sorted(sums)
        return dict(zip(keys, (v / world for v in distributed.all_reduce_sum([sums[k] for k in keys], device)),
                        strict=True))

    model.to(device)
    # dense gradients before DistributedDataParallel wraps the model: it reads each embedding's sparse flag then
    with _StopRequests() as stop_requests, dense_gradients(model):
        net: nn.Module = distributed.wrap(model, device) if world > 1 else model
        for epoch in range(start_epoch, epochs):
            if should_stop is not None and epoch == start_epoch and start_batch == 0 and epoch > 0 \
                    and should_stop(result.history[-1] if result.history else {}) is not None:
                break  # a resumed run that had already stopped early
            model.train()
            t0 = time.perf_counter()
            if world > 1:
                batches: Any = _shard_batches(data, recipe.batch_size, recipe.seed, epoch, world, rank)
            else:
                loader = data.loader("train", recipe.batch_size, shuffle=True, seed=recipe.seed, epoch=epoch)
                batches = ((i, x, y, 1.0) for i, (x, y) in enumerate(loader))
            # running means of this epoch; a resumed epoch continues those of the interrupted one
            resumed = epoch == start_epoch and start_batch > 0
            sums: dict[str, float] = dict(partial["sums"]) if resumed else {}
            seen = int(partial["seen"]) if resumed else 0
            bar = tqdm(total=steps_per_epoch, desc=f"{phase} {epoch + 1}/{epochs}",
                       disable=None if progress and main else True, leave=False, dynamic_ncols=True)
            skip = start_batch if epoch == start_epoch else 0
            for batch_index, x, y, share in batches:
                if batch_index < skip:  # replaying a resumed epoch: same order, these are done
                    bar.update(1)
                    continue
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                loss, parts = step_loss(net, x, y, step, share, autocast)
                if not math.isfinite(parts["loss"]):  # the logged value: no second synchronisation
                    saved = checkpoint_path is not None and checkpoint_path.exists()  # none before the first epoch
                    raise TrainingError(
                        f"the {phase} loss became {parts['loss']} at epoch {epoch + 1}, batch {batch_index + 1}"
                        f"{'; the last good checkpoint is ' + checkpoint_path.name if saved else ''}"
                        f"; lower the learning rate (now {optimizer.param_groups[0]['lr']:.3g}, e.g. --lr "
                        f"{recipe.lr / 10:g}) or set grad_clip in the recipe"
                    )
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    if recipe.grad_clip is not None:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    if recipe.grad_clip is not None:
                        nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                    optimizer.step()
                scheduler.step()
                if after_step is not None:
                    after_step()
                step += 1
                if on_step is not None:
                    on_step(step)
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                seen += 1
                bar.update(1)
                if distributed.any_rank(stop_requests.requested, device) if world > 1 else stop_requests.requested:
                    partial = {"sums": reduce_sums(sums), "seen": seen}
                    bar.close()
                    stop(epoch, batch_index + 1)
                if seen % 10 == 0:
                    bar.set_postfix({k: f"{v / seen:.4g}" for k, v in sums.items()}, refresh=False)
            bar.close()
            sums = reduce_sums(sums)
            record: dict[str, Any] = {"phase": phase, "epoch": epoch + 1}
            record.update({k: v / max(seen, 1) for k, v in sums.items()})
            record["lr"] = optimizer.param_groups[0]["lr"]
            if main:  # the other ranks hold the same weights: one evaluation is enough
                if phase == "variational":
                    # the running statistics describe the noisy network: the thresholded one is measured with its
                    # own (a sparse VD ResNet-18 read 80.6% with them, within its budget with its own)
                    recalibrate_from(model, data.loader("train", recipe.eval_batch_size), device)
                val = evaluate(model, data.loader("val", recipe.eval_batch_size), loss=recipe.loss, device=device)
                record.update({f"val_{k}": v for k, v in val.items()})
                record.update(epoch_stats())
            record["seconds"] = time.perf_counter() - t0
            result.history.append(record)
            if progress and main:
                shown = {k: v for k, v in record.items() if k not in ("phase", "epoch", "lr")}
                tqdm.write(f"{phase} epoch {epoch + 1}/{epochs}: "
                           + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
            stopped = should_stop(record) if should_stop is not None and epoch + 1 < epochs else None
            checkpoint(epoch + 1, 0)
            if stopped is not None:
                if progress and main:
                    tqdm.write(stopped)
                break
            stop_now = stop_requests.requested
            if world > 1:
                stop_now = distributed.any_rank(stop_now, device)
            if stop_now and epoch + 1 < epochs:
                stop(epoch + 1, 0)
    return result


def _parallel(parallel: bool | None, device: torch.device) -> tuple[bool, torch.device]:
    """Join torchrun's process group when there is one (and ``parallel`` is not False); the rank's device."""
    if parallel is False:
        return False, device
    rank_device = distributed.init(device)
    if rank_device is not None:
        device = rank_device
    return distributed.world_size() > 1, device


def finetune(
    model: nn.Module,
    data: DataBundle,
    recipe: Recipe,
    *,
    device: torch.device | str = "cpu",
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    precision: str | None = None,
    compile: str | None = None,
    parallel: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a variational model (see :func:`prunedrop.convert.to_variational`) on the ELBO.

    With ``recipe.automatic`` the autopilot (:mod:`prunedrop.autopilot`) moves β to meet the recipe's budget and
    target, and ends the phase early once it has settled; ``log`` gets its one-line notes.

    ``precision`` (fp32, bf16, fp16) and ``compile`` (auto, always, never) override the recipe's keys of
    the same name (recipes without them mean fp32 and auto). ``parallel``: None trains data-parallel when
    started by torchrun with ``WORLD_SIZE > 1`` (see :mod:`prunedrop.distributed`), False never.
    """
    device = torch.device(device)
    precision = precision or getattr(recipe, "precision", "fp32")
    compile_mode = compile or getattr(recipe, "compile", "auto")
    layers = variational_layers(model)
    if not layers:
        raise PrunedropError("the model has no variational layer; convert it with to_variational first")
    check_precision(precision, device)
    parallel, device = _parallel(parallel, device)
    model.to(device)
    optimizer = variational_adam(model, recipe)
    n = data.num_train
    steps_per_epoch = max(1, math.ceil(n / recipe.batch_size))
    epochs = recipe.epochs if recipe.epochs is not None else autopilot.auto_epochs(n, recipe.batch_size)
    warmup_steps = recipe.kl_warmup_epochs * steps_per_epoch
    layer_list = list(layers.values())
    factors = kl_factors(model, recipe.kl_weights)
    pilot = Pilot(model, data, recipe, steps_per_epoch, device, log=log) if recipe.automatic else None
    if pilot is not None:
        factors = pilot.factors
        pilot.weights_lr = lambda: float(optimizer.param_groups[0]["lr"])
        pilot.reset_optimizer = optimizer.state.clear
        if not (resume and checkpoint_path is not None and Path(checkpoint_path).exists()):
            with _StopRequests() as requests:
                pilot.start(interrupted=lambda: requests.requested)
            if pilot.interrupted:
                raise TrainingInterrupted("interrupted during the autopilot's probe, before the first training step "
                                          "(no checkpoint yet); run the same command again to start over")
    layer_factors = [factors[name] for name in layers]
    steps_left = epochs * steps_per_epoch
    if compile_mode == "auto" and resume and checkpoint_path is not None and Path(checkpoint_path).exists():
        # compiling pays off only over the steps still to run, not over the whole schedule
        steps_left = max(0, steps_left - int(load_checkpoint(Path(checkpoint_path)).get("step", 0)))
    kernels = _choose_kernels(compile_mode, layer_list, steps_left, device)

    def step_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int, share: float,
                  autocast: Callable[[], Any]) -> tuple[torch.Tensor, dict[str, float]]:
        if pilot is not None:
            beta = pilot.controller.beta
        else:
            beta = recipe.fixed_beta * (min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0)
        with autocast():
            out = net(x)
        data_term = data_loss(recipe.loss, out.float(), y)
        kl = training_kl(layer_list, layer_factors)  # float32: the layers keep log α and the KL out of autocast
        # the autopilot's data term in the budget's unit (mse: relative to the given model's error; read at each
        # step, since a resumed run restores the reference from its checkpoint once training has started)
        scale = share * (1.0 if pilot is None else pilot.data_scale)
        loss = (data_term * scale if scale != 1.0 else data_term) + beta * kl / n
        # one device synchronisation for the three logged values, not one each
        loss_v, data_v, kl_v = torch.stack([loss.detach(), data_term.detach(), kl.detach()]).tolist()
        if pilot is not None:
            pilot.note_kl(kl_v)
        return loss, {"loss": loss_v, "data_loss": data_v, "kl": kl_v, "beta": beta}

    def epoch_stats() -> dict[str, float]:
        stats = {"kept_fraction": kept_fraction(model)}
        if pilot is not None and pilot.controller.checks:
            last = pilot.controller.checks[-1]
            stats["beta_now"] = last.beta
            if last.smoothed_drop is not None:
                stats["val_drop_smoothed"] = last.smoothed_drop
            if last.val_smoothed is not None:  # the checks count training samples too: validation's alone
                stats["val_only_drop_smoothed"] = last.val_smoothed
            if last.cost_ratio is not None:
                stats["cost_ratio"] = last.cost_ratio
        return stats

    with kernels_set(layer_list, kernels):
        result = _run(model, data, recipe, phase="variational", epochs=epochs, optimizer=optimizer,
                      step_loss=step_loss, after_step=None, device=device,
                      checkpoint_path=Path(checkpoint_path) if checkpoint_path else None, resume=resume,
                      progress=progress, epoch_stats=epoch_stats, precision=precision, parallel=parallel,
                      on_step=None if pilot is None else pilot.on_step,
                      should_stop=None if pilot is None else lambda record: pilot.should_stop(),
                      extra_state=None if pilot is None else (pilot.state_dict, pilot.load_state_dict),
                      lr_scale=None if pilot is None else (lambda: pilot.lr_scale))
    result.epochs = epochs
    if pilot is not None:
        line = pilot.rewind()
        if line is not None:
            if log is not None:
                log(line)
            if checkpoint_path is not None and Path(checkpoint_path).exists():
                # the checkpoint holds what the phase ends with: --resume and `prunedrop export` read it
                state = load_checkpoint(Path(checkpoint_path))
                state["model"] = model.state_dict()
                state["extra"] = pilot.state_dict()
                save_checkpoint(state, Path(checkpoint_path))
        result.autopilot = pilot.summary()
    return result


def _trains_anything(model: nn.Module, data: DataBundle, device: torch.device) -> bool:
    """Whether a gradient of the model's output reaches a parameter that requires grad: one forward and backward on
    two validation inputs, in eval mode (no running statistic moves), without touching any ``.grad``."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        return False
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            outs = [t for t in output_tensors(model(data.example_batch(2).to(device))) if t.requires_grad]
            if not outs:
                return False
            total = torch.stack([t.float().sum() for t in outs]).sum()
            grads = torch.autograd.grad(total, trainable, allow_unused=True)
        return any(g is not None for g in grads)
    except (RuntimeError, TypeError, ValueError):  # an input this probe cannot take: let the training decide
        return True
    finally:
        model.train(was_training)


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
    precision: str | None = None,
    parallel: bool | None = None,
    stop_on: Callable[[dict[str, Any]], str | None] | None = None,
    kept_fraction: float | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train the surviving weights of a deterministic model; ``masks`` (parameter name → keep) stay applied.

    Only what the user lets train is trained: a parameter frozen with ``requires_grad=False`` keeps the value the
    threshold left it (its pruned entries zero). Where no parameter that may train reaches the output (every one
    frozen, or cut off by ``torch.no_grad()``), the fine-tuning is skipped, with a line to ``log``, and the result
    holds no epoch, as with ``finetune_epochs: 0``.

    Adam at :meth:`Recipe.finetune_rate` (cosine to zero): ``finetune_lr``, or for a null one 0.3 × ``lr``, since a
    direct call has no probe that judges the result; ``compress()`` decides a null rate first
    (:func:`prunedrop.stages.with_finetune_rate`).

    ``precision`` and ``parallel`` as in :func:`finetune`. ``stop_on(record)``: after each epoch but the last, given
    its history record (``val_accuracy`` or ``val_mse`` among its keys); a message stops the fine-tuning there, with
    its checkpoint written, and a later call with ``resume`` and without ``stop_on`` continues it to the end of the
    same schedule. ``kept_fraction``: what each epoch's record says was kept (the pruned model's share of its
    variational layers' weights or units, as the variational phase counted it); without it, the share of the masked
    parameters that are non-zero, which says nothing for a slim model, whose masks cover only the pruned units
    slimming had to keep (all zero: a kept fraction of 0 in the history and the plot).
    """
    device = torch.device(device)
    precision = precision or getattr(recipe, "precision", "fp32")
    check_precision(precision, device)
    parallel, device = _parallel(parallel, device)
    model.to(device)
    params = dict(model.named_parameters())
    missing = set(masks) - set(params)
    if missing:
        raise PrunedropError(f"masks name parameters the model does not have: {', '.join(sorted(missing))}")
    pairs = [(params[name], mask.to(device=device, dtype=params[name].dtype)) for name, mask in masks.items()]
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.finetune_rate())

    def apply_masks() -> None:
        with torch.no_grad():
            for p, mask in pairs:
                p.mul_(mask)

    apply_masks()
    epochs = recipe.finetune_epochs_for(data.num_train)
    if epochs > 0 and not _trains_anything(model, data, device):
        if log is not None:
            log("noise-free fine-tuning skipped: no parameter the model lets train (requires_grad) reaches its "
                "output; the kept weights stay as the variational phase left them")
        return TrainResult(epochs=0)

    def step_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int, share: float,
                  autocast: Callable[[], Any]) -> tuple[torch.Tensor, dict[str, float]]:
        with autocast():
            out = net(x)
        loss = data_loss(recipe.loss, out.float(), y)
        return (loss * share if share != 1.0 else loss), {"loss": loss.item()}

    def nonzero_fraction() -> dict[str, float]:
        if kept_fraction is not None:
            return {"kept_fraction": kept_fraction}
        if not pairs:  # a slim model with nothing masked: nothing to count
            return {}
        kept = sum(int((p != 0).sum()) for p, _ in pairs)
        total = sum(p.numel() for p, _ in pairs)
        return {"kept_fraction": kept / total if total else 1.0}

    return _run(model, data, recipe, phase="masked", epochs=epochs, optimizer=optimizer,
                step_loss=step_loss, after_step=apply_masks, device=device,
                checkpoint_path=Path(checkpoint_path) if checkpoint_path else None, resume=resume,
                progress=progress, epoch_stats=nonzero_fraction, precision=precision, parallel=parallel,
                should_stop=stop_on)

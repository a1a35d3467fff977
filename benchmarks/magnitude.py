"""Gradual magnitude pruning (Zhu & Gupta 2017), the baseline of the sparse VD benchmark.

Global L1 pruning with ``torch.nn.utils.prune.global_unstructured`` over the weights of every Linear/Conv
layer, following the cubic schedule ``s_t = s_f·(1 − (1 − t/T)^3)`` at evenly spaced steps of the first
``prune_epochs`` epochs, then training on at the final sparsity until ``epochs`` epochs are done. Adam,
cosine learning rate over all steps. The target is a number of non-zero weights (the count that sparse VD
kept), reached exactly at the last pruning step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from prunedrop.data import DataBundle
from prunedrop.train import evaluate

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]


def cubic_sparsity(step: int, final_sparsity: float, prune_steps: int) -> float:
    """Zhu & Gupta's schedule with initial sparsity 0: ``s_f·(1 − (1 − t/T)^3)``, t clipped to T."""
    t = min(step, prune_steps) / max(prune_steps, 1)
    return final_sparsity * (1.0 - (1.0 - t) ** 3)


def _pruned_count(params: list[tuple[nn.Module, str]]) -> int:
    return sum(int((getattr(m, name + "_mask") == 0).sum()) if hasattr(m, name + "_mask") else 0
               for m, name in params)


def magnitude_prune(
    model: nn.Module,
    data: DataBundle,
    *,
    target_nonzero: int,
    epochs: int,
    prune_epochs: int,
    lr: float = 1e-3,
    batch_size: int = 100,
    prune_every: int = 50,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> tuple[nn.Module, dict]:
    """Prune ``model`` (trained, modified in place) gradually to ``target_nonzero`` weights; train; return it.

    Returns the model with the pruning made permanent and a summary (non-zeros, test/val accuracy,
    seconds, the schedule used).
    """
    torch.manual_seed(seed)
    params = prunable_weights(model)
    total = sum(getattr(m, name).numel() for m, name in params)
    target_pruned = total - int(target_nonzero)
    final_sparsity = target_pruned / total
    steps_per_epoch = len(data.loader("train", batch_size, shuffle=True, seed=seed, epoch=0))
    total_steps = epochs * steps_per_epoch
    prune_steps = max(1, prune_epochs * steps_per_epoch)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total_steps) / total_steps)))

    def prune_to(step: int) -> None:
        # the last pruning step lands exactly on the target, whatever the rounding on the way
        want = target_pruned if step >= prune_steps else round(cubic_sparsity(step, final_sparsity, prune_steps)
                                                                * total)
        extra = want - _pruned_count(params)
        if extra > 0:  # amount (an int) counts weights still unpruned: the container prunes only those
            # the current weights: a pruned module's `weight` attribute is only refreshed by its next forward
            scores = {(m, name): (getattr(m, name + "_orig") * getattr(m, name + "_mask")).detach()
                      if prune.is_pruned(m) else getattr(m, name).detach() for m, name in params}
            prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=extra,
                                      importance_scores=scores)

    t0 = time.perf_counter()
    step = 0
    history = []
    for epoch in range(epochs):
        model.train()
        te = time.perf_counter()
        for x, y in data.loader("train", batch_size, shuffle=True, seed=seed, epoch=epoch):
            if step <= prune_steps and step % prune_every == 0 or step == prune_steps:
                prune_to(step)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        if step >= prune_steps:
            prune_to(prune_steps)
        val = evaluate(model, data.loader("val", 1000))["accuracy"]
        sparsity = _pruned_count(params) / total
        history.append({"epoch": epoch + 1, "val_accuracy": round(val, 3), "sparsity": round(sparsity, 5)})
        log(f"magnitude epoch {epoch + 1}/{epochs}: sparsity {sparsity:.4f}, val accuracy {val:.2f}% "
            f"({time.perf_counter() - te:.1f} s)")
    for m, name in params:
        if prune.is_pruned(m):
            prune.remove(m, name)
    model.eval()
    nonzero = sum(int(torch.count_nonzero(getattr(m, name))) for m, name in params)
    summary = {
        "weights_total": total,
        "weights_nonzero": nonzero,
        "final_sparsity": 1.0 - nonzero / total,
        "epochs": epochs,
        "prune_epochs": prune_epochs,
        "prune_every_steps": prune_every,
        "lr": lr,
        "batch_size": batch_size,
        "val_accuracy": evaluate(model, data.loader("val", 1000))["accuracy"],
        "test_accuracy": evaluate(model, data.loader("test", 1000))["accuracy"] if data.test is not None else None,
        "seconds": time.perf_counter() - t0,
        "history": history,
    }
    return model, summary

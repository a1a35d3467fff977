"""Train a plain (dense) model and save its state dict: how the shipped example model was made.

    python examples/train_dense.py --arch examples.models:digits_mlp --data digits --epochs 40 \
        -o examples/digits_mlp.pt

The benchmarks use it too, to train LeNet-300-100 and LeNet-5 on Fashion-MNIST before compressing them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prunedrop.atomic import atomic_torch_save  # noqa: E402
from prunedrop.data import DataBundle, fit_inputs, load_data  # noqa: E402
from prunedrop.storage import import_object  # noqa: E402
from prunedrop.train import data_loss, evaluate  # noqa: E402


def train_dense(arch: str, data_spec: str, epochs: int, *, lr: float = 1e-3, batch_size: int = 100,
                seed: int = 0, val_fraction: float = 0.1, data_dir: str | None = None,
                train_limit: int | None = None, eval_limit: int | None = None, device: str = "cpu",
                log=print) -> tuple[torch.nn.Module, dict[str, float]]:
    """Adam with a cosine schedule on ``device``; returns the model (on the CPU) and its validation/test
    accuracy. ``train_limit`` keeps the first n training samples, ``eval_limit`` evaluates on the first n
    validation and test samples (quick trials)."""
    torch.manual_seed(seed)
    data = load_data(data_spec, data_dir=data_dir, val_fraction=val_fraction, seed=seed, train_limit=train_limit)
    if eval_limit is not None:
        import dataclasses

        from torch.utils.data import Subset

        data = dataclasses.replace(data, val=Subset(data.val, range(min(eval_limit, len(data.val)))),
                                   test=None if data.test is None else
                                   Subset(data.test, range(min(eval_limit, len(data.test)))))
    model = import_object(arch, what="--arch")()
    data, said = fit_inputs(model, data)  # token ids and layouts fed as `prunedrop compress` feeds them
    if said:
        log(said)
    model = fit_dense(model, data, epochs, lr=lr, batch_size=batch_size, seed=seed, device=device, log=log)
    result = {"val": evaluate(model, data.loader("val", 1000), device=device)["accuracy"]}
    if data.test is not None:
        result["test"] = evaluate(model, data.loader("test", 1000), device=device)["accuracy"]
    return model.cpu().eval(), result


def fit_dense(model: torch.nn.Module, data: DataBundle, epochs: int, *, lr: float = 1e-3, batch_size: int = 100,
              seed: int = 0, device: str | torch.device = "cpu", log=print,
              loss: str = "cross_entropy") -> torch.nn.Module:
    """The training loop of :func:`train_dense` on data already loaded: Adam, cosine schedule, the data
    bundle's (seed, epoch) batch order; logs the validation accuracy each epoch; returns the model on ``device``.
    ``loss``: a prunedrop loss name (``binary_cross_entropy`` for a one-logit classifier)."""
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * len(data.loader("train", batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    for epoch in range(epochs):
        model.train()
        t0 = time.perf_counter()
        for x, y in data.loader("train", batch_size, shuffle=True, seed=seed, epoch=epoch):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            value = data_loss(loss, model(x), y)
            opt.zero_grad()
            value.backward()
            opt.step()
            sched.step()
        val = evaluate(model, data.loader("val", 1000), loss=loss, device=device)["accuracy"]
        log(f"epoch {epoch + 1}/{epochs}: val accuracy {val:.2f}% ({time.perf_counter() - t0:.1f} s)")
    return model


def cached_dense(build: Callable[[], torch.nn.Module], train: Callable[[], torch.nn.Module], epochs: int,
                 cache: Path | None, *, label: str | None = None) -> tuple[torch.nn.Module, dict]:
    """The benchmarks' trained dense model: ``build()`` with the state dict cached at ``cache``, or ``train()``
    now and cached there (not cached when ``cache`` is None, e.g. in a smoke run). Returns the model in eval mode
    and what the result JSON records: ``cached``, ``seconds`` (None when cached) and ``file`` (``label``, by
    default the cache path)."""
    shown = label or (None if cache is None else str(cache))
    if cache is not None and cache.is_file():
        model = build()
        model.load_state_dict(torch.load(cache, weights_only=True))
        print(f"dense model: reused {shown}")
        return model.eval(), {"cached": True, "seconds": None, "file": shown}
    t0 = time.perf_counter()
    model = train()
    seconds = time.perf_counter() - t0
    if cache is not None:
        atomic_torch_save(model.state_dict(), cache)
    print(f"dense model: trained {epochs} epochs in {seconds:.0f} s" + (f", saved {shown}" if cache else ""))
    return model.eval(), {"cached": False, "seconds": seconds, "file": shown}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True, help="module:factory of the architecture")
    p.add_argument("--data", default="digits", help="prunedrop data spec")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="where to save the state dict")
    args = p.parse_args()
    model, acc = train_dense(args.arch, args.data, args.epochs, lr=args.lr, batch_size=args.batch_size,
                             seed=args.seed, data_dir=args.data_dir)
    atomic_torch_save(model.state_dict(), args.output)
    print(f"saved {args.output}: " + ", ".join(f"{k} accuracy {v:.2f}%" for k, v in acc.items()))


if __name__ == "__main__":
    main()

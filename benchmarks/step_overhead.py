"""Training-step overhead of sparse VD: one optimizer step of the variational model vs the dense one.

One step = forward, loss (mean CE, plus ΣKL/N for the variational model), backward, Adam update: what
``prunedrop.train.finetune`` does per batch. Variants, timed alternately in one process (so that the load of
a shared machine hits all of them alike), median over the steps after a warm-up:

* ``dense``: the original model;
* ``vd-eager``: the sparse VD model as the layers run by default (``compile: never``);
* ``vd-compiled``: the same layers with the trainer's fused kernels (``compile: always``): log α, α·θ² and
  the KL in one compiled pass per layer, the output noise in another; the products stay eager;
* ``two-pass-floor``: not a usable model but the floor under any sparse VD step: the same two products per
  layer (``f(x, θ) + b`` and ``f(x², v)``) and Adam over the same doubled parameters, with none of the
  elementwise work (no log α, no KL, no square root: ``out = μ + v-product·ε``). What separates
  ``vd-compiled`` from it is the noise math; what separates it from ``dense`` is the local
  reparameterisation's second product (forward and backward) and the optimizer state of log σ².

``--precision bf16`` runs every variant under autocast (bf16 products; the variational layers keep log α,
the KL and the noise in float32, as training with ``precision: bf16`` does).

    python benchmarks/step_overhead.py                         # all models, CPU (and CUDA when present)
    python benchmarks/step_overhead.py --models lenet300 --steps 200 --threads 1

Writes ``results/step_overhead.json`` and prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root (python benchmarks/<script>.py)

from benchmarks.common import ROOT, cpu_model
from examples.models import lenet5, lenet300
from prunedrop.convert import to_variational, variational_layers
from prunedrop.recipes import Recipe
from prunedrop.train import compiled_kernels, kernels_set, training_kl


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32×32 CIFAR inputs (3×3 stem, no max-pool; 11.2M parameters)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


MODELS = {
    # name: (factory, input shape, batch size)
    "lenet300": (lenet300, (1, 28, 28), 100),
    "lenet5": (lenet5, (1, 28, 28), 100),
    "resnet18": (ResNet18, (3, 32, 32), 256),
}
N_TRAIN = 60_000  # the ELBO's N; only a constant factor of the KL here


def step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, variational: bool,
             autocast: torch.dtype | None = None):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    layers = list(variational_layers(model).values()) if variational else []

    def step() -> None:
        with torch.autocast(x.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = F.cross_entropy(model(x), y)
            if variational:
                loss = loss + training_kl(layers) / N_TRAIN
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, layers


def _floor_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The two products of the local reparameterisation and nothing else (see ``two-pass-floor``)."""
    mu = self._apply_weight(x, self.weight, self.bias)
    return mu + self._apply_weight(x * x, self.log_sigma2, None) * torch.randn_like(mu)


def _two_pass_floor(dense: nn.Module) -> nn.Module:
    model = to_variational(copy.deepcopy(dense).cpu(), Recipe())
    for layer in variational_layers(model).values():
        layer.forward = types.MethodType(_floor_forward, layer)
    return model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(name: str, device: torch.device, steps: int, warmup: int, compile_: bool,
                autocast: torch.dtype | None = None) -> dict:
    factory, shape, batch = MODELS[name]
    torch.manual_seed(0)
    dense = factory().to(device).train()
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    variants: dict[str, tuple] = {"dense": step_fn(dense, x, y, False, autocast)}
    vd = to_variational(copy.deepcopy(dense).cpu(), Recipe()).to(device).train()
    variants["vd-eager"] = step_fn(vd, x, y, True, autocast)
    variants["two-pass-floor"] = step_fn(_two_pass_floor(dense).to(device).train(), x, y, False, autocast)
    compile_s = None
    kernels = None
    if compile_:
        vd_c = to_variational(copy.deepcopy(dense).cpu(), Recipe()).to(device).train()
        t0 = time.perf_counter()
        kernels = compiled_kernels(device)
        compile_s = time.perf_counter() - t0
        if kernels is not None:
            variants["vd-compiled"] = step_fn(vd_c, x, y, True, autocast)
    times: dict[str, list[float]] = {k: [] for k in variants}
    order = list(variants)
    for i in range(warmup + steps):
        for k in order[i % len(order):] + order[:i % len(order)]:  # rotate: no variant always runs first
            step, layers = variants[k]
            with kernels_set(layers, kernels if k == "vd-compiled" else None):
                _sync(device)
                t0 = time.perf_counter()
                step()
                _sync(device)
                dt = time.perf_counter() - t0
            if i >= warmup:
                times[k].append(dt)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    row = {"model": name, "device": str(device), "batch": batch, "steps": steps,
           "precision": "fp32" if autocast is None else "bf16",
           "params": sum(p.numel() for p in dense.parameters()),
           "median_ms": med, "ratio": {k: med[k] / med["dense"] for k in med if k != "dense"},
           "p25_p75_ms": {k: [statistics.quantiles(v, n=4)[0] * 1e3, statistics.quantiles(v, n=4)[2] * 1e3]
                          for k, v in times.items()},
           "compile_warmup_s": compile_s}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--steps", type=int, default=100, help="timed steps per variant (LeNets)")
    ap.add_argument("--resnet-steps", type=int, default=None,
                    help="timed steps for resnet18 (default: 6 on CPU, --steps on CUDA)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, plus cuda if present)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: every variant under autocast (the products in bf16)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "step_overhead.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    rows = []
    load_before = os.getloadavg()
    for dev in devices:
        device = torch.device(dev)
        for name in args.models:
            steps = args.steps
            if name == "resnet18":
                steps = args.resnet_steps or (6 if device.type == "cpu" else args.steps)
            warmup = min(args.warmup, 2) if name == "resnet18" and device.type == "cpu" else args.warmup
            row = bench_model(name, device, steps, warmup, not args.no_compile,
                              torch.bfloat16 if args.precision == "bf16" else None)
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "command": " ".join([sys.executable, *sys.argv]),
        "torch": torch.__version__, "threads": args.threads, "cpu_count": os.cpu_count(),
        "machine": platform.platform(), "processor": platform.processor(), "cpu": cpu_model(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"\nload average before/after: {load_before[0]:.2f} / {result['loadavg_after'][0]:.2f}, "
          f"{args.threads} torch thread(s), {os.cpu_count()} CPUs\n")
    print("| model | device | precision | batch | dense ms/step | VD eager | VD compiled | two-pass floor "
          "| eager / dense | compiled / dense | floor / dense |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        m, q = r["median_ms"], r["ratio"]
        comp = f"{m['vd-compiled']:.2f}" if "vd-compiled" in m else "n/a"
        compr = f"{q['vd-compiled']:.2f}×" if "vd-compiled" in q else "n/a"
        print(f"| {r['model']} | {r['device']} | {r['precision']} | {r['batch']} | {m['dense']:.2f} | "
              f"{m['vd-eager']:.2f} | {comp} | {m['two-pass-floor']:.2f} | {q['vd-eager']:.2f}× | {compr} | "
              f"{q['two-pass-floor']:.2f}× |")


if __name__ == "__main__":
    main()

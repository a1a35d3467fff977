"""Large models: convert and fine-tune a ~100M-parameter transformer-style MLP stack for one step.

The model: ``--blocks`` (12) residual blocks of LayerNorm → Linear(d, 4d) → ReLU → Linear(4d, d), d = 1024:
100.8M parameters. Each measurement runs in its own subprocess so that its peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is its own:

* ``dense``: build, one Adam step (forward, backward, update) on a batch of 8 sequences;
* ``variational``: build, ``to_variational`` (checked: every weight is the same Parameter object at the same
  ``data_ptr`` afterwards - conversion copies nothing, it adds log σ² only), one step of the ELBO.

    python benchmarks/large_model.py              # table for BENCHMARKS.md, results/large_model.json
    python benchmarks/large_model.py --seq 128    # longer sequences (more activation memory, slower)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(d: int, blocks: int):
    from prunedrop.testing import MLPStack

    return MLPStack(d, blocks)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(mode: str, d: int, blocks: int, batch: int, seq: int, threads: int, compile_: bool) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    out: dict = {"mode": mode}
    model = build(d, blocks)
    out["params"] = sum(p.numel() for p in model.parameters())
    out["rss_after_build_mib"] = _rss_mib()
    layers = []
    if mode == "variational":
        from prunedrop.convert import to_variational, variational_layers
        from prunedrop.recipes import Recipe

        before = {n: (p, p.data_ptr()) for n, p in model.named_parameters()}
        t0 = time.perf_counter()
        model = to_variational(model, Recipe())
        out["convert_s"] = time.perf_counter() - t0
        after = dict(model.named_parameters())
        out["weights_shared"] = all(after[n] is p and after[n].data_ptr() == ptr for n, (p, ptr) in before.items())
        out["params_after_convert"] = sum(p.numel() for p in model.parameters())
        layers = list(variational_layers(model).values())
        out["rss_after_convert_mib"] = _rss_mib()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, seq, d)
    y = torch.randint(0, 10, (batch,))
    kernels = None
    if mode == "variational" and compile_:
        from prunedrop.train import compiled_kernels

        kernels = compiled_kernels(torch.device("cpu"))
    from contextlib import nullcontext

    if layers:
        from prunedrop.train import kernels_set, training_kl

        ctx = kernels_set(layers, kernels)
    else:
        ctx = nullcontext()
    with ctx:
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        if layers:
            loss = loss + training_kl(layers) / 60_000
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        out["step_s"] = time.perf_counter() - t0
    out["loss_finite"] = bool(torch.isfinite(loss))
    out["peak_rss_mib"] = _rss_mib()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="the variational step with the fused kernels")
    ap.add_argument("--child", choices=["dense", "variational"], help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "large_model.json")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.d, args.blocks, args.batch, args.seq, args.threads, args.compile)))
        return
    rows = []
    load = os.getloadavg()
    for mode in ("dense", "variational"):
        cmd = [sys.executable, __file__, "--child", mode, "--d", str(args.d), "--blocks", str(args.blocks),
               "--batch", str(args.batch), "--seq", str(args.seq), "--threads", str(args.threads)]
        if args.compile:
            cmd.append("--compile")
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        if proc.returncode != 0:
            sys.exit(f"{mode} run failed:\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"command": " ".join([sys.executable, *sys.argv]), "machine": platform.platform(),
              "cpu_count": os.cpu_count(), "loadavg_before": load, "loadavg_after": os.getloadavg(),
              "batch": args.batch, "seq": args.seq, "d": args.d, "blocks": args.blocks, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    dense, vd = rows
    print(f"\n{dense['params'] / 1e6:.1f}M parameters, batch {args.batch} × {args.seq} tokens, "
          f"{args.threads} threads, load average {load[0]:.2f}\n")
    print("| model | parameters (incl. log σ²) | RSS after build | after convert | peak RSS, one step | step s |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| dense | {dense['params'] / 1e6:.1f}M | {dense['rss_after_build_mib']:,.0f} MiB | – | "
          f"{dense['peak_rss_mib']:,.0f} MiB | {dense['step_s']:.1f} |")
    print(f"| sparse VD | {vd['params_after_convert'] / 1e6:.1f}M | {vd['rss_after_build_mib']:,.0f} MiB | "
          f"{vd['rss_after_convert_mib']:,.0f} MiB | {vd['peak_rss_mib']:,.0f} MiB | {vd['step_s']:.1f} |")
    print(f"\nconversion shares every weight (same Parameter, same data_ptr): {vd['weights_shared']}; "
          f"peak ratio variational / dense: {vd['peak_rss_mib'] / dense['peak_rss_mib']:.2f}×")


if __name__ == "__main__":
    main()

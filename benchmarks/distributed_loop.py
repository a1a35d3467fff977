"""Teardown of a two-process torchrun job, run many times under CPU load: how many runs end in a non-zero exit.

Issue 18 item 14: once, under load, rank 1 of a two-process gloo run aborted at the very end ("terminate called
without an active exception", exit -6) after training had finished. This script repeats such a job ``--runs``
times while ``--load`` busy-loop processes compete for the CPU, and counts the runs whose torchrun exit status is
not 0, the aborts among them (a worker that died of SIGABRT, or "terminate called" in the output) and, per rank,
the gloo threads (``gloo_tcp_loop``, ``pt_gloo_runloop``) and Python threads still alive after the job's
teardown (after ``prunedrop.distributed.cleanup``; for ``compress``, when the process exits): the threads that a
clean teardown has joined.

Jobs (``--job``):

* ``finetune`` (default): the job of ``tests/test_distributed.py``'s uninterrupted two-process run - the library
  API (``prunedrop.train.finetune`` under DistributedDataParallel, 2 epochs of a tiny MLP), ended by
  ``prunedrop.distributed.cleanup()`` as a user's script ends it;
* ``compress``: ``torchrun --nproc_per_node=2`` running ``prunedrop compress`` (``prunedrop.cli.main``) on the
  tiny project of the tests.

``--root DIR`` takes prunedrop from another checkout (e.g. an unpatched one, to count before a fix).

    nice python benchmarks/distributed_loop.py --runs 25 --load 2
    nice python benchmarks/distributed_loop.py --runs 25 --load 2 --root /tmp/prunedrop-before --label before

Not part of the test suite (a loop of minutes). Writes ``results/distributed-loop-<label>.json`` with every
run's exit status, wall time and leftover threads, the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root (python benchmarks/<script>.py)

from benchmarks.common import ROOT, cpu_model

JOB = textwrap.dedent("""
    import json
    import os
    import sys
    import threading

    import torch
    from torch.utils.data import TensorDataset
    from prunedrop import distributed
    from prunedrop.convert import to_variational
    from prunedrop.data import DataBundle
    from prunedrop.recipes import Recipe
    from prunedrop.testing import TinyMLP, tiny_classification_data
    from prunedrop.train import finetune

    torch.set_num_threads(1)
    out = sys.argv[1]
    x, y = tiny_classification_data(n=160, shape=(1, 4, 4), seed=3)
    data = DataBundle(name="tiny", train=TensorDataset(x[:96], y[:96]), val=TensorDataset(x[96:], y[96:]),
                      test=None, input_shape=(1, 4, 4), num_classes=3)
    recipe = Recipe(epochs=2, batch_size=16, lr=1e-2, noise_lr=5e-2, kl_weight=1.0, kl_warmup_epochs=1, seed=7,
                    device="cpu")
    torch.manual_seed(0)
    model = to_variational(TinyMLP(16, (24, 12), 3), recipe)
    finetune(model, data, recipe, progress=False, compile="never")
    rank = distributed.rank()
    distributed.cleanup()
    # what is still running once the job has torn down (read by the benchmark, one file per rank)
    native = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")) \\
        if os.path.isdir("/proc/self/task") else []
    with open(f"{out}.threads{rank}", "w") as f:
        json.dump({"native": native, "python": sorted(t.name for t in threading.enumerate())}, f)
""")


# the compress job: the `prunedrop` command, with a probe that lists the threads left when the process exits
# (registered before prunedrop's own atexit handler, so it runs after it)
COMPRESS = textwrap.dedent("""
    import atexit
    import json
    import os
    import sys
    import threading

    def probe():
        native = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")) \\
            if os.path.isdir("/proc/self/task") else []
        with open(f"{os.environ['LOOP_OUT']}.threads{os.environ['RANK']}", "w") as f:
            json.dump({"native": native, "python": sorted(t.name for t in threading.enumerate())}, f)

    atexit.register(probe)
    from prunedrop.cli import main

    sys.argv = ["prunedrop", *sys.argv[1:]]
    main()
""")


def _busy() -> None:
    while True:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_run(job: str, folder: Path, pythonpath: str, timeout: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": pythonpath}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                f"--master_port={_free_port()}"]
    out = folder / "out"
    if job == "finetune":
        script = folder / "job.py"
        script.write_text(JOB)
        cmd = [*torchrun, str(script), str(out)]
    else:
        script = folder / "compress.py"
        script.write_text(COMPRESS)
        cmd = [*torchrun, str(script), "compress", "model.pt", "--arch", "tinyarch:build", "--data",
               "npz:data.npz", "--recipe", "recipe.yaml", "-o", str(out), "--overwrite", "--quiet"]
        env["PYTHONPATH"] = f"{folder}{os.pathsep}{pythonpath}"
        env["LOOP_OUT"] = str(out)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=folder)
        rc, log = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, log = None, (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
    wall = time.perf_counter() - t0
    threads = {}
    for rank in range(2):
        path = Path(f"{out}.threads{rank}")
        if path.exists():
            threads[rank] = json.loads(path.read_text())
            path.unlink()
    aborted = "terminate called" in log or "SIGABRT" in log or "exitcode  : -6" in log
    return {"rc": rc, "aborted": aborted, "wall_s": round(wall, 2), "threads_after_cleanup": threads,
            "log_tail": log[-1500:] if rc != 0 else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="how many two-process jobs to run, one after another")
    ap.add_argument("--load", type=int, default=os.cpu_count() or 1,
                    help="busy-loop processes competing for the CPU while the jobs run (default: one per core)")
    ap.add_argument("--job", choices=["finetune", "compress"], default="finetune")
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout whose prunedrop the jobs import")
    ap.add_argument("--timeout", type=float, default=300, help="seconds one job may take before it counts as hung")
    ap.add_argument("--label", default="after", help="names the result file: results/distributed-loop-LABEL.json")
    ap.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()

    pythonpath = str(args.root.resolve())
    load = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(args.load)]
    for p in load:
        p.start()
    runs = []
    try:
        with tempfile.TemporaryDirectory(prefix="prunedrop-dist-loop-") as tmp:
            folder = Path(tmp)
            if args.job == "compress":
                sys.path.insert(0, pythonpath)
                from prunedrop.testing import write_tiny_project

                write_tiny_project(folder)
            for i in range(args.runs):
                run = _one_run(args.job, folder, pythonpath, args.timeout)
                runs.append(run)
                left = {r: [n for n in t["native"] if "gloo" in n] for r, t in run["threads_after_cleanup"].items()}
                print(f"run {i + 1}/{args.runs}: exit {run['rc']}{' ABORT' if run['aborted'] else ''}, "
                      f"{run['wall_s']:.1f} s, gloo threads left after cleanup {left}", flush=True)
    finally:
        for p in load:
            p.terminate()
            p.join()
    failed = [r for r in runs if r["rc"] != 0]
    leftover = sum(1 for r in runs for t in r["threads_after_cleanup"].values() if any("gloo" in n for n in t["native"]))
    summary = {
        "job": args.job, "runs": len(runs), "load_processes": args.load, "nonzero_exits": len(failed),
        "aborts": sum(r["aborted"] for r in runs), "hung": sum(r["rc"] is None for r in runs),
        "ranks_with_gloo_threads_after_cleanup": leftover,
        "ranks_measured": sum(len(r["threads_after_cleanup"]) for r in runs),
        "median_wall_s": sorted(r["wall_s"] for r in runs)[len(runs) // 2] if runs else None,
    }
    print(json.dumps(summary))
    import torch

    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"distributed-loop-{args.label}.json"
    path.write_text(json.dumps({
        **summary, "label": args.label, "command": " ".join(shlex.quote(a) for a in sys.argv),
        "root": pythonpath, "torch": torch.__version__, "python": sys.version.split()[0],
        "cpu": cpu_model(), "cpus": os.cpu_count(), "per_run": runs,
    }, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Data-parallel fine-tuning: two gloo processes on the CPU train what one process trains.

What can match and what cannot: with DDP each rank takes half of every global batch and the gradients are
averaged, so the update equals the single-process update on the whole batch up to float summation order -
except for the noise of the local reparameterisation, whose per-sample draws come from each rank's own RNG
stream and cannot be the single process's. Making the noise merely small does not help: Adam divides by
√v, so a weight whose data gradient is ~0 (a dead ReLU unit) takes lr-sized steps in the direction of
whatever tiny noise gradient it gets (measured: two single-process runs that differ only in the noise seed,
at σ = e⁻¹⁵, end 1.7e-2 apart after 12 steps). So both runs here draw zero noise (``torch.randn_like`` is
replaced in the training scripts); everything else - the data term on shards, the KL (the same on every
rank) and its gradient, β warm-up, Adam, the LR schedule - is the real thing. The weights then agree to
1e-5 (float summation order), while training moved them by more than 1e-2.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from prunedrop import distributed

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from torch.utils.data import TensorDataset
    from prunedrop import distributed
    from prunedrop.convert import to_variational
    from prunedrop.data import DataBundle
    from prunedrop.recipes import Recipe
    from prunedrop.testing import TinyMLP, tiny_classification_data
    from prunedrop.train import TrainingInterrupted, finetune

    torch.set_num_threads(1)
    torch.randn_like = torch.zeros_like  # no noise: see the module docstring
    out, ckpt = sys.argv[1], sys.argv[2]
    stop_after = int(sys.argv[3]) if len(sys.argv) > 3 else 0  # rank 0 gets a Ctrl-C after this many batches
    resume = len(sys.argv) > 4 and sys.argv[4] == "resume"
    x, y = tiny_classification_data(n=160, shape=(1, 4, 4), seed=3)
    data = DataBundle(name="tiny", train=TensorDataset(x[:96], y[:96]), val=TensorDataset(x[96:], y[96:]),
                      test=None, input_shape=(1, 4, 4), num_classes=3)
    if stop_after and distributed.env_world_size() > 0 and int(__import__("os").environ.get("RANK", "0")) == 0:
        import os
        import signal
        original, seen = data.loader, [0]

        def loader(split, batch_size, **kw):
            inner = original(split, batch_size, **kw)
            if split != "train":
                return inner

            def indices():  # the sharded loop walks the global batches' indices
                for batch in inner.batch_sampler:
                    seen[0] += 1
                    if seen[0] > stop_after:
                        os.kill(os.getpid(), signal.SIGINT)
                    yield batch

            class Interrupting:
                collate_fn = staticmethod(inner.collate_fn)
                batch_sampler = indices()

                def __len__(self):
                    return len(inner)

            return Interrupting()

        data.loader = loader
    recipe = Recipe(epochs=2, batch_size=16, lr=1e-2, noise_lr=5e-2, kl_weight=1.0, kl_warmup_epochs=1, seed=7,
                    device="cpu")
    torch.manual_seed(0)
    model = to_variational(TinyMLP(16, (24, 12), 3), recipe)
    try:
        result = finetune(model, data, recipe, checkpoint_path=ckpt, resume=resume, progress=False,
                          compile="never")
    except TrainingInterrupted:
        open(f"{out}.interrupted{distributed.rank()}", "w").close()  # a file: printed lines interleave
        left_behind(distributed.rank(), distributed.cleanup)
        sys.exit(3)
    if distributed.is_main():
        torch.save({"state": model.state_dict(), "history": result.history,
                    "world": distributed.world_size(), "resumed_from": result.resumed_from}, out)
    left_behind(distributed.rank(), distributed.cleanup)
""")

# what a script's teardown left running (issue 18, item 14): the names of the threads, one file per rank
LEFT_BEHIND = textwrap.dedent("""
    def left_behind(rank, teardown):
        import json, os, sys, threading

        teardown()
        if os.path.isdir("/proc/self/task"):
            tasks = []
            for t in os.listdir("/proc/self/task"):
                try:
                    tasks.append(open(f"/proc/self/task/{t}/comm").read().strip())
                except OSError:  # the thread ended between the listing and the read: it is not left behind
                    pass
            with open(f"{sys.argv[1]}.threads{rank}", "w") as f:
                json.dump({"native": sorted(tasks), "python": [t.name for t in threading.enumerate()]}, f)
""")


def _assert_nothing_left_behind(out: Path, ranks: int) -> None:
    """No gloo thread (``gloo_tcp_loop``, ``pt_gloo_runloop``) and no Python thread but the main one outlived the
    teardown: none can then abort the process in the interpreter's shutdown and lose its exit status."""
    if not os.path.isdir("/proc/self/task"):  # the threads are listed through Linux's /proc
        return
    for rank in range(ranks):
        left = json.loads(Path(f"{out}.threads{rank}").read_text())
        assert not [t for t in left["native"] if "gloo" in t], (rank, left)
        assert left["python"] == ["MainThread"], (rank, left)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path: Path, nproc: int, *extra: str, tag: str = "", expect_rc: int = 0) -> dict | None:
    script = tmp_path / "train_tiny.py"
    script.write_text(LEFT_BEHIND + SCRIPT)
    out, ckpt = tmp_path / f"out{nproc}{tag}.pt", tmp_path / f"ckpt{nproc}{tag}.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if nproc == 1:
        for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(k, None)
        cmd = [sys.executable, str(script), str(out), str(ckpt), *extra]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
               f"--master_port={_free_port()}", str(script), str(out), str(ckpt), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (proc.returncode == 0) if expect_rc == 0 else (proc.returncode != 0), log
    assert ckpt.exists()
    _assert_nothing_left_behind(out, nproc)
    if expect_rc:
        # every rank stopped at the same step, through the checkpoint path, not by a crash
        assert all(Path(f"{out}.interrupted{r}").exists() for r in range(nproc)), log
        return None
    return torch.load(out, weights_only=True)


def test_two_gloo_processes_train_the_same_weights_as_one(tmp_path: Path) -> None:
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    single = _run(tmp_path, 1)
    double = _run(tmp_path, 2)
    assert single["world"] == 1 and double["world"] == 2
    torch.manual_seed(0)
    from prunedrop.testing import TinyMLP

    initial = TinyMLP(16, (24, 12), 3).state_dict()
    moved = max(float((single["state"][k] - v).abs().max()) for k, v in initial.items())
    assert moved > 1e-2  # training did something the comparison can see
    for k, a in single["state"].items():
        torch.testing.assert_close(double["state"][k], a, atol=1e-5, rtol=0, msg=k)
    # the logged losses are the global batch's (averaged over ranks), so they match too
    for h1, h2 in zip(single["history"], double["history"], strict=True):
        assert h2["data_loss"] == pytest.approx(h1["data_loss"], rel=1e-4)
        assert h2["kl"] == pytest.approx(h1["kl"], rel=1e-4)


def test_two_gloo_processes_interrupted_then_resumed_train_the_same_weights(tmp_path: Path) -> None:
    """Ctrl-C on rank 0 mid-epoch stops every rank at the same step with one checkpoint; --resume on two
    processes then ends with exactly the weights of an uninterrupted two-process run."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    straight = _run(tmp_path, 2, tag="straight")
    # 96 samples, global batch 16 → 6 steps per epoch; rank 0 walks 6 local batches per epoch: stop in epoch 2
    _run(tmp_path, 2, "8", tag="cut", expect_rc=3)
    resumed = _run(tmp_path, 2, "0", "resume", tag="cut")
    assert resumed["resumed_from"] is not None and tuple(resumed["resumed_from"])[0] == 1
    for k, a in straight["state"].items():
        torch.testing.assert_close(resumed["state"][k], a, atol=1e-6, rtol=0, msg=k)
    assert [h["loss"] for h in straight["history"]] == pytest.approx([h["loss"] for h in resumed["history"]],
                                                                      rel=1e-6)


TEARDOWN = textwrap.dedent("""
    import atexit
    import os
    import signal
    import sys

    import torch
    from tqdm import tqdm
    from prunedrop import distributed

    atexit.register(left_behind, int(os.environ["RANK"]), lambda: None)  # runs after init's atexit handler
    torch.set_num_threads(1)
    distributed.init("cpu")
    torch.manual_seed(0)
    net = distributed.wrap(torch.nn.Linear(4, 2), torch.device("cpu"))
    net(torch.randn(3, 4)).sum().backward()
    for _ in tqdm(range(2), file=open(os.devnull, "w")):  # starts tqdm's monitor thread
        pass
    if distributed.rank() == 0:
        os.kill(os.getpid(), signal.SIGTERM)  # as torchrun stops a job, or a scheduler cancels it
    distributed.barrier()  # rank 1 waits here for a rank that is gone: an error, not a hang
    raise AssertionError("not reached")
""")


def test_sigterm_and_an_error_tear_down_and_keep_the_exit_status(tmp_path: Path) -> None:
    """Rank 0 gets SIGTERM, rank 1 then fails in a collective (its peer is gone) and raises: neither calls
    cleanup, both tear down on the way out (atexit), leave no thread behind, and exit with their own status:
    143 (128 + SIGTERM) and 1 (an uncaught error), not -6 or -15."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    script = tmp_path / "teardown.py"
    script.write_text(LEFT_BEHIND + TEARDOWN)
    port, out = _free_port(), tmp_path / "out"
    procs = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PRUNEDROP_DIST_TIMEOUT_S": "120"}
        procs.append(subprocess.Popen([sys.executable, str(script), str(out)], env=env, cwd=tmp_path,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        logs = [proc.communicate(timeout=240)[0][-2000:] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [proc.returncode for proc in procs] == [143, 1], logs
    assert "RuntimeError" in logs[1] and "not reached" not in logs[1], logs[1]
    _assert_nothing_left_behind(out, 2)


def test_teardown_without_a_group_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init("cpu") is None
    distributed.teardown()
    distributed.teardown()
    assert not distributed.is_initialized()


def test_helpers_answer_as_one_process_without_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init("cpu") is None
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    distributed.barrier()
    assert distributed.all_reduce_sum([1.0, 2.0]) == [1.0, 2.0]
    assert distributed.any_rank(False) is False
    distributed.cleanup()


def test_torchrun_without_rendezvous_variables_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    for k in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(distributed.PrunedropError, match="torchrun"):
        distributed.init("cpu")


@pytest.mark.parametrize("rendezvous", ["c10d", "static"])
def test_two_nodes_through_torchrun_rendezvous_train_the_same_weights_as_one(tmp_path: Path, rendezvous: str) -> None:
    """Multi-node: two torchrun agents (``--nnodes=2``, one process each, as on two machines) meet through the
    c10d rendezvous (``--rdzv_backend=c10d --rdzv_endpoint=HOST:PORT``) or the static one (``--node_rank``,
    ``--master_addr``); here both agents run on this machine, over TCP on 127.0.0.1."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    single = _run(tmp_path, 1)
    script = tmp_path / "train_tiny.py"
    out, ckpt = tmp_path / "out-nodes.pt", tmp_path / "ckpt-nodes.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    port = _free_port()
    agents = []
    for node in range(2):
        if rendezvous == "c10d":
            where = ["--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=prunedrop-test"]
        else:
            where = [f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}"]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", *where,
               str(script), str(out), str(ckpt)]
        agents.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True))
    logs = []
    for agent in agents:
        try:
            logs.append(agent.communicate(timeout=420)[0])
        except subprocess.TimeoutExpired:
            for a in agents:
                a.kill()
            raise
    assert all(a.returncode == 0 for a in agents), "\n".join(log[-2000:] for log in logs)
    nodes = torch.load(out, weights_only=True)
    assert nodes["world"] == 2
    for k, a in single["state"].items():
        torch.testing.assert_close(nodes["state"][k], a, atol=1e-5, rtol=0, msg=k)


def test_torchrun_compress_end_to_end_writes_once_from_rank_0(tmp_path: Path) -> None:
    """``torchrun --nproc_per_node=2 -m prunedrop compress ...``: two gloo ranks fine-tune, rank 0 alone
    thresholds, exports, verifies and reports; the report says it trained on 2 processes."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    import json

    from prunedrop.testing import write_tiny_project

    write_tiny_project(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(tmp_path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           f"--master_port={_free_port()}", "-m", "prunedrop", "compress", "model.pt", "--arch", "tinyarch:build",
           "--data", "npz:data.npz", "--recipe", "recipe.yaml", "-o", "out", "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["world_size"] == 2
    assert report["parity_max_abs_diff"] < 1e-4
    assert report["params"]["after"] < report["params"]["before"]
    # one table on stdout (rank 0), not one per rank
    assert proc.stdout.count("wrote ") == 1, proc.stdout
    assert not list((tmp_path / "out").glob("*.tmp*"))


SPARSE_SCRIPT = textwrap.dedent("""
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset
    from prunedrop import distributed
    from prunedrop.convert import to_variational
    from prunedrop.data import DataBundle
    from prunedrop.recipes import Recipe
    from prunedrop.train import finetune


    class Tables(nn.Module):
        def __init__(self):
            super().__init__()
            self.bag = nn.EmbeddingBag(30, 6, mode="mean", sparse=True)
            self.embedding = nn.Embedding(30, 6, sparse=True)
            self.fc = nn.Linear(12, 3)

        def forward(self, ids):
            return self.fc(torch.cat([self.bag(ids), self.embedding(ids).mean(1)], 1))


    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 20, (96, 5), generator=g)
    y = ids[:, 0] % 3
    data = DataBundle(name="tiny", train=TensorDataset(ids[:64], y[:64]), val=TensorDataset(ids[64:], y[64:]),
                      test=None, input_shape=(5,), num_classes=3)
    recipe = Recipe(epochs=1, batch_size=16, lr=1e-2, kl_weight=1.0, kl_warmup_epochs=1, seed=7, device="cpu",
                    exclude=["fc"])
    torch.manual_seed(0)
    model = to_variational(Tables(), recipe)
    finetune(model, data, recipe, progress=False, compile="never")
    if distributed.is_main():
        print("trained", model.bag.sparse, model.embedding.sparse)
    distributed.cleanup()
""")


def test_two_gloo_processes_train_sparse_gradient_embeddings(tmp_path: Path) -> None:
    """DistributedDataParallel reads each embedding's ``sparse`` flag when it wraps the model: wrapped before the
    flags were switched to dense gradients, two ranks stopped with "Expected variable to have sparse gradient"."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    script = tmp_path / "sparse.py"
    script.write_text(SPARSE_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           f"--master_port={_free_port()}", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0 and "trained True True" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]

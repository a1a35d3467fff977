"""Data-parallel fine-tuning under ``torchrun``: the process group and the few helpers the trainer needs.

``torchrun --nproc_per_node=K -m prunedrop compress ...`` starts K processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. :func:`init` joins them into one process group
(gloo on the CPU, nccl on CUDA) when ``WORLD_SIZE > 1``; without torchrun every helper answers as a
single process would (rank 0 of 1), so the rest of the code needs no special case.

How the work is split (see :func:`prunedrop.train.finetune`): every rank walks the same global batches
(the ``(seed, epoch)`` permutation of :meth:`prunedrop.data.DataBundle.loader`, ``batch_size`` samples
each) and takes its own contiguous share of each; DistributedDataParallel averages the gradients. The
global batch therefore stays ``batch_size`` whatever the number of processes, learning rates keep their
meaning, and N in the ELBO is the full training-set size on every rank. Only rank 0 writes files.

Teardown (see docs/distributed.md): a run ends with :func:`cleanup` (a barrier, then :func:`teardown`); an error,
Ctrl-C or SIGTERM ends it with :func:`teardown` alone, at the latest from an ``atexit`` handler that :func:`init`
registers. :func:`teardown` destroys the process group - which joins gloo's threads - and stops tqdm's monitor
thread, so that no background thread outlives it into the interpreter's shutdown, where one that still runs can
abort the process ("terminate called without an active exception", exit -6) and lose its exit status.
"""

from __future__ import annotations

import atexit
import datetime
import gc
import os
import signal
import sys
import threading
import traceback
import weakref
from typing import Any

import torch

from .errors import PrunedropError

#: seconds a collective (or the final barrier, while rank 0 exports and reports) may wait for the others
DEFAULT_TIMEOUT_S = 3 * 3600


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when it is not set)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise PrunedropError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a whole number") from None


def is_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    return torch.distributed.get_world_size() if is_initialized() else 1


def rank() -> int:
    return torch.distributed.get_rank() if is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on the process that writes checkpoints, the ONNX file and the report (rank 0)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank; a no-op in a single process."""
    if is_initialized():
        torch.distributed.barrier()


def init(device: torch.device | str | None = None) -> torch.device | None:
    """Join the torchrun process group when ``WORLD_SIZE > 1``; return the device this rank trains on.

    ``device`` is the resolved training device: on CUDA every rank takes ``cuda:LOCAL_RANK`` and the nccl
    backend, on the CPU gloo. Returns None (and does nothing) in a single process. Calling it again once
    the group exists only returns the device.
    """
    if env_world_size() <= 1:
        return None
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        if local_rank() >= torch.cuda.device_count():
            raise PrunedropError(f"LOCAL_RANK {local_rank()} has no GPU: {torch.cuda.device_count()} CUDA device(s); "
                                 "start at most that many processes per node")
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if is_initialized():
        return device
    if not torch.distributed.is_available():
        raise PrunedropError("WORLD_SIZE > 1 but this PyTorch was built without torch.distributed")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise PrunedropError(f"WORLD_SIZE > 1 but {', '.join(missing)} not set; start with "
                             "`torchrun --nproc_per_node=K -m prunedrop compress ...`")
    timeout = datetime.timedelta(seconds=float(os.environ.get("PRUNEDROP_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S)))
    _import_dynamo()
    torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout,
                                         **({"device_id": device} if device.type == "cuda" else {}))
    _arm_teardown()
    return device


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel, remembered so that :func:`teardown` can let go of the group it holds."""
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    _wrappers.add(ddp)
    return ddp


def cleanup() -> None:
    """End a run that every rank finished: a final barrier (so that no rank tears the group down under another),
    then :func:`teardown`."""
    if is_initialized():
        torch.distributed.barrier()
    teardown()


def teardown() -> None:
    """Leave the process group now, without waiting for the other ranks: the end of a run, or its error path.

    Destroys the group, which joins gloo's threads once nothing holds the group any more: the wrappers of
    :func:`wrap` still alive (in an error's traceback, say) let go of it first, and see :func:`_import_dynamo`.
    A DistributedDataParallel built elsewhere holds the group (and its threads) as long as it lives. Also stops
    tqdm's monitor thread and puts back the SIGTERM handler that :func:`init` replaced. A no-op when
    there is nothing to tear down; safe to call more than once.
    """
    if is_initialized():
        _release_wrappers()
        torch.distributed.destroy_process_group()
    _stop_tqdm_monitor()
    _restore_sigterm()


#: the DistributedDataParallel wrappers of :func:`wrap` that are still alive
_wrappers: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
#: the SIGTERM handler before :func:`init` replaced it (None: not replaced)
_previous_sigterm: Any = None
_atexit_registered = False


class Terminated(SystemExit):
    """SIGTERM (torchrun stopping the job, a scheduler's cancel) during a distributed run: leaves through the
    error path, so that the process group is torn down, with exit status 143 (128 + SIGTERM)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated(128 + signal.SIGTERM)


def _arm_teardown() -> None:
    """Make :func:`teardown` run however the process ends: at exit (an error that no one caught, Ctrl-C's
    KeyboardInterrupt, sys.exit) from an atexit handler, which runs while the interpreter is still whole; on
    SIGTERM - whose default action kills the process without any teardown - by raising :class:`Terminated`
    (only where no one installed a handler of their own, and only in the main thread, which signals reach)."""
    global _atexit_registered, _previous_sigterm
    if not _atexit_registered:
        atexit.register(_teardown_at_exit)
        _atexit_registered = True
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        _previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)


def _teardown_at_exit() -> None:
    """The atexit handler: the run ended without :func:`cleanup` (an error, Ctrl-C, sys.exit, SIGTERM).

    An error that no one caught stays in ``sys.last_value``, and the frames of its traceback keep their locals,
    among them the group of the collective that failed (a peer that died): the group would outlive its
    destruction. Nothing reads those locals any more at exit, so they are cleared first.
    """
    if is_initialized():
        seen: set[int] = set()
        error = getattr(sys, "last_value", None)
        while error is not None and id(error) not in seen:
            seen.add(id(error))
            traceback.clear_frames(error.__traceback__)
            error = error.__cause__ or error.__context__
        gc.collect()
    teardown()


def _restore_sigterm() -> None:
    global _previous_sigterm
    if _previous_sigterm is not None and threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, _previous_sigterm)
        _previous_sigterm = None


def _release_wrappers() -> None:
    """Make the wrappers of :func:`wrap` let go of the process group: their reducer and logger (C++ objects that
    hold it) and the group itself. A wrapper is of no use once its group is gone."""
    for ddp in list(_wrappers):
        for name in ("reducer", "logger", "process_group"):
            if name in ddp.__dict__:
                ddp.__dict__[name] = None
    _wrappers.clear()


def _import_dynamo() -> None:
    """Import ``torch._dynamo`` before the process group exists.

    DistributedDataParallel imports it when it is built; imported while the group exists, it keeps references to
    the group that ``destroy_process_group`` does not drop (measured with torch 2.13: the group's refcount goes
    from 10 to 20 and stays there), so the group is never freed and its gloo threads (``gloo_tcp_loop``,
    ``pt_gloo_runloop``) keep running into the interpreter's shutdown. Imported first, nothing holds the group
    once the wrapper is gone and destroying it joins them (``benchmarks/distributed_loop.py`` counts them).
    """
    try:
        import torch._dynamo  # noqa: F401
    except ImportError:  # a build without it: DistributedDataParallel then does not import it either
        pass


def _stop_tqdm_monitor() -> None:
    """Join tqdm's monitor thread (started by the first progress bar); tqdm starts a new one if a bar follows."""
    if "tqdm" not in sys.modules:
        return
    from tqdm._monitor import TMonitor

    for thread in threading.enumerate():
        if isinstance(thread, TMonitor) and thread is not threading.current_thread():
            thread.exit()


def all_reduce_sum(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Element-wise sum of ``values`` over the ranks (the values themselves in a single process)."""
    if not is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device(device))
    torch.distributed.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True when ``flag`` is true on any rank (e.g. a stop request that one process received)."""
    if not is_initialized():
        return flag
    return all_reduce_sum([float(flag)], device)[0] > 0


def gather_objects(obj: object) -> list[object]:
    """``obj`` of every rank, in rank order (``[obj]`` in a single process)."""
    if not is_initialized():
        return [obj]
    out: list[object] = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def _collective_device(device: torch.device | str) -> torch.device:
    # nccl only moves CUDA tensors; gloo takes CPU tensors
    if is_initialized() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")

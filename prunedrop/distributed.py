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
"""

from __future__ import annotations

import datetime
import os

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
    torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout,
                                         **({"device_id": device} if device.type == "cuda" else {}))
    return device


def cleanup() -> None:
    """Leave the process group (after a final barrier, so that no rank tears it down under another)."""
    if is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


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

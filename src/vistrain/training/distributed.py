"""Data-parallel training over several processes started by torchrun (gloo on CPU, NCCL on GPU).

``torchrun --nproc_per_node N -m vistrain train ...``: every process builds the same split and the
same probe (both are seeded), fine-tuning shards each epoch's images across the processes and
averages gradients (DistributedDataParallel), and only rank 0 writes checkpoints and the run folder.
The backend follows ``--device`` (see :mod:`vistrain.training.device`): NCCL when the processes
train on GPUs (each on ``cuda:LOCAL_RANK``), gloo on the CPU, even on a machine that has GPUs.
Decisions that end an epoch loop early (time budget, a NaN loss) are taken together, or one
process would wait forever for the others.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device | None = None) -> str | None:
    """Join the process group torchrun describes; returns the backend, or None when running alone.

    ``device``: where this process trains (:func:`~vistrain.training.device.resolve_device`);
    NCCL for a CUDA device, made this process's current GPU, gloo otherwise.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if not active():
        cuda = device is not None and device.type == "cuda"
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_backend()


def _comm_device() -> torch.device:
    """Where tensors for collectives live: NCCL only moves GPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model for training steps: DDP-wrapped across processes, else unchanged."""
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard_length(n: int) -> int:
    return math.ceil(n / world_size())


def shard(order: np.ndarray) -> np.ndarray:
    """This process's share of an epoch's order; every share has the same length (wrapping around),
    so all processes run the same number of steps."""
    w = world_size()
    if w == 1:
        return order
    per = shard_length(len(order))
    padded = np.resize(order, per * w)  # repeats from the start to fill the last share
    return padded[rank()::w]


def agree_min(value: float) -> float:
    """The smallest ``value`` over all processes (e.g. epochs planned from each one's measured speed)."""
    if world_size() == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t.item()


def any_rank(flag: bool) -> bool:
    """True on every process when ``flag`` is true on any."""
    if world_size() == 1:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def shutdown() -> None:
    if active():
        dist.destroy_process_group()

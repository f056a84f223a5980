"""Where the network runs: ``--device auto|cpu|cuda``, and what running there implies.

On CUDA, training steps use automatic mixed precision (float16 autocast with a gradient scaler),
batches are prepared in pinned memory and copied without blocking, and each torchrun process uses
its own GPU (``cuda:LOCAL_RANK``). On the CPU nothing changes: float32, the same numbers as before
(this CPU has no bfloat16 hardware, so CPU autocast would only be slower). Evaluation, feature
extraction and prediction stay float32 on every device: cached features are shared between runs,
and validation logits fit the temperature that prediction uses later. Models are channels_last on
every device (measured ~2x faster on the CPU for EfficientNet-Lite; also the layout tensor cores want).
Saved weights are always CPU tensors, so a run trained on a GPU loads anywhere.
"""

from __future__ import annotations

import contextlib
import os

import torch

DEVICES = ("auto", "cpu", "cuda")


def check_device(requested: str) -> str:
    """The name itself: one of :data:`DEVICES` (availability is :func:`resolve_device`'s job)."""
    if requested not in DEVICES:
        raise ValueError(f"device {requested!r} is not one of {', '.join(DEVICES)}")
    return requested


def resolve_device(requested: str) -> torch.device:
    """``auto``: CUDA when PyTorch sees a GPU, else the CPU; ``cuda`` without one is an error.

    Under torchrun (``WORLD_SIZE`` > 1) each process takes ``cuda:LOCAL_RANK``; ``auto`` stays on
    the CPU when there are fewer GPUs than processes on this machine (every process decides alike).
    """
    check_device(requested)
    if requested == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if requested == "auto":
            return torch.device("cpu")
        raise ValueError("--device cuda: no CUDA device is visible to PyTorch (torch.cuda.is_available() is False); "
                         "use --device cpu or --device auto")
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return torch.device("cuda", torch.cuda.current_device())
    count = torch.cuda.device_count()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    if local > count:
        if requested == "auto":
            return torch.device("cpu")
        raise ValueError(f"--device cuda: {local} processes on this machine but {count} CUDA device(s) visible; "
                         f"each process needs its own GPU (use --device cpu, or at most {count} processes)")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def describe(device: torch.device) -> str:
    """``cpu`` or ``cuda:0 (GPU name)``, for the log."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s parameters are (the CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def uses_amp(device: torch.device) -> bool:
    """Mixed precision for training steps: on CUDA only."""
    return device.type == "cuda"


def autocast(device: torch.device):
    """float16 autocast on CUDA; on the CPU a no-op context (float32, numbers unchanged)."""
    if uses_amp(device):
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def grad_scaler(device: torch.device) -> torch.amp.GradScaler | None:
    """The loss scaler float16 gradients need (on CUDA); None on the CPU."""
    return torch.amp.GradScaler("cuda") if uses_amp(device) else None


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device`` (unchanged on the CPU); CUDA copies do not block (pinned sources overlap)
    and keep the channels_last layout."""
    if device.type == "cpu":
        return x
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def pin(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Page-locked host memory for a batch bound for CUDA (the copy can then overlap); unchanged otherwise."""
    return x.pin_memory() if device.type == "cuda" else x


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (for honest timings); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch_workers(device: torch.device) -> int:
    """Threads preparing training batches. One on the CPU: the step itself keeps every core busy and
    one thread already hides batch preparation. For a GPU, whose steps are ~20x shorter, the cores
    this process may use (shared with the other torchrun processes on the machine), at most 8."""
    if device.type != "cuda":
        return 1
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(8, ((os.cpu_count() or 2) - 1) // local))


def gpu_activation_budget(device: torch.device) -> float | None:
    """Bytes a training pass's activations may take on ``device``: half of the GPU memory free now.
    None for the CPU, whose budget comes from the process's memory (:mod:`vistrain.memory`)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return free / 2

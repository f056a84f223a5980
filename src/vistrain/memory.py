"""Batch sizes chosen for memory (torch-free: the ONNX predictor and the server use it too).

A convolutional network's activation memory grows with batch x height x width. Measured on
EfficientNet-Lite0 at 352 px on 2 CPU cores (benchmarks/throughput.py prints the current figures):

- inference, ONNX Runtime: batch 32 took +1.71 GB, batch 8 +0.21 GB, at 19.4 vs 19.9 img/s;
  PyTorch channels_last: batch 64 peaked at 3.0 GB, batch 8 at 1.2 GB, at 6.6 vs 9.1 img/s.
  On a CPU a big inference batch buys no speed, only memory, so inference batches are sized to
  a fixed activation budget.
- training (forward + backward, lowest third and BatchNorm frozen, BatchNorm folded into the
  convolutions: training/fold.py), 288 px crops, one step in a fresh process: peak RSS 1.65 GB at
  batch 32, 1.36 GB at 16, 1.02 GB at 8, over 0.78 GB held before the first step (torch and timm
  imported): 330-390 bytes per pixel per image (before "same" convolutions padded themselves,
  models/inference.py: 1.85 / 1.36 / 1.09 GB; unfolded: 2.19 / 1.52 / 1.20 GB, ~510).
  A whole `vistrain train` run on climbing (fine-tuning, batch 32) peaked at 2.5 GB.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import sys

# Activation bytes per input pixel (height x width) per image, from the measurements above.
INFERENCE_BYTES_PER_PIXEL = 430
TRAINING_BYTES_PER_PIXEL = 450  # 15-35% above the measured per-image share (Lite0)
INFERENCE_BUDGET_BYTES = 512e6
# Besides one pass's activations: gradients, AdamW state and prefetched batches (Lite0: ~0.1 GB).
TRAINING_MARGIN_BYTES = 0.2e9
MOST_INFERENCE_BATCH = 32


def inference_batch_size(size: int, budget_bytes: float = INFERENCE_BUDGET_BYTES) -> int:
    """Images per inference call at ``size`` x ``size`` that keep activations within ``budget_bytes``
    (9 at 352 px, 23 at 224 px)."""
    per_image = INFERENCE_BYTES_PER_PIXEL * size * size
    return max(1, min(MOST_INFERENCE_BATCH, int(budget_bytes // per_image)))


def _proc_kib(path: str, key: str) -> int | None:
    """A ``key: N kB`` line of a Linux /proc file, in bytes; None elsewhere."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_memory_bytes() -> int | None:
    """Memory the kernel says can be had without swapping (Linux ``MemAvailable``), or None."""
    found = _proc_kib("/proc/meminfo", "MemAvailable:")
    if found is not None:
        return found
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def process_rss_bytes() -> int | None:
    """This process's resident memory now (Linux), or None."""
    return _proc_kib("/proc/self/status", "VmRSS:")


def training_budget_bytes(max_memory_gb: float | None) -> float | None:
    """Bytes that one training pass's activations may take.

    With ``max_memory_gb`` (the user's cap on the whole process): the cap minus what the process
    already holds and a margin for gradients, optimizer state and prefetched batches. Without: half of
    the memory the system has available (None when unknown: no limit).
    """
    if max_memory_gb is not None:
        return max_memory_gb * 1e9 - (process_rss_bytes() or 0) - TRAINING_MARGIN_BYTES
    available = available_memory_bytes()
    return available / 2 if available is not None else None


def training_micro_batch(batch: int, crop: int, budget_bytes: float | None) -> int:
    """Images per forward/backward pass for training batches of ``batch`` crops of ``crop`` px.

    The batch is split into the fewest equal passes whose activations fit ``budget_bytes``; the
    optimizer still steps once per batch, so the recipe is unchanged and only the peak memory falls
    (passes of 16 instead of 32 images measured ~20% slower on 2 CPU cores: split only when needed).
    """
    if budget_bytes is None:
        return batch
    per_image = TRAINING_BYTES_PER_PIXEL * crop * crop
    passes = 1
    while passes < batch and math.ceil(batch / passes) * per_image > budget_bytes:
        passes += 1
    return math.ceil(batch / passes)


def release_freed_memory() -> None:
    """Give memory that Python, NumPy and ONNX Runtime have freed back to the system.

    glibc keeps freed blocks in its per-thread arenas, so after decoding and feature extraction the
    process stays ~0.5 GB bigger than what it holds, and fine-tuning's activations come on top.
    ``malloc_trim`` returns the free pages; elsewhere (not glibc) this only collects garbage.
    """
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
            pass


def peak_rss_gb() -> float | None:
    """This process's peak resident memory in GB (Linux VmHWM), or None elsewhere. Not ru_maxrss:
    Linux carries that over fork and exec, so a child of a big process would report the parent's."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024**2
    except (OSError, StopIteration):
        return None

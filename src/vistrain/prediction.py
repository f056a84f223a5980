"""What every predictor returns (PyTorch, ONNX Runtime, the server): torch-free, shared by all."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vistrain.data.images import ImageError


@dataclass
class Prediction:
    path: str
    probabilities: np.ndarray | None  # over the model's classes; None when the file failed
    error: str | None = None
    # Nearest-neighbour similarity to the training photos, and whether it passes the run's threshold
    # (vistrain.familiarity); None for runs without the check.
    similarity: float | None = None
    familiar: bool | None = None


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (the run's stored temperature calibrates it)."""
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def decoded_batches(
    paths: list[str | Path],
    decode: Callable[[str], np.ndarray],
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[list[str], list[int], np.ndarray | None, list[str | None]]]:
    """Decode files in threads, a batch at a time, for every predictor.

    Yields ``(paths, good, pixels, errors)`` per batch: ``pixels`` stacks the files at positions
    ``good`` (None when none decoded); ``errors`` holds each file's reason, or None. A bad file
    costs only its own prediction.
    """

    def one(p: str):
        try:
            return decode(p), None
        except ImageError as exc:
            return None, exc.reason

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = [str(p) for p in paths[start : start + batch_size]]
            decoded = list(pool.map(one, chunk))
            good = [i for i, (px, _) in enumerate(decoded) if px is not None]
            pixels = np.stack([decoded[i][0] for i in good]) if good else None
            yield chunk, good, pixels, [err for _, err in decoded]
            if progress:
                progress(len(chunk))

"""What every predictor returns (PyTorch, ONNX Runtime, the server): torch-free, shared by all."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Prediction:
    path: str
    probabilities: np.ndarray | None  # over the model's classes; None when the file failed
    error: str | None = None


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (the run's stored temperature calibrates it)."""
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)

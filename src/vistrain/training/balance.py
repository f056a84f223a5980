"""Class imbalance: measure it, choose one correction (sampler or weighted loss, never both), score by macro F1.

Applying both a balanced sampler and a class-weighted loss corrects twice: minority classes end up
over-predicted (sweeps in the projects vistrain grew from showed it), so ``auto`` picks one.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

BALANCE_METHODS = ("auto", "sampler", "loss", "none")
# Below this largest/smallest class ratio the data counts as balanced: no correction, accuracy decides.
IMBALANCED_RATIO = 1.5
# From this ratio on a plain shuffle leaves the smallest classes out of most batches; resampling
# shows them every few steps. Between the two, weighting the loss keeps every image once per epoch.
SAMPLER_RATIO = 4.0


def imbalance_ratio(labels: np.ndarray, num_classes: int) -> float:
    """Images in the largest class / images in the smallest (present) class; 1.0 when balanced."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_classes)
    present = counts[counts > 0]
    return float(present.max() / present.min()) if len(present) else 1.0


def resolve_balance(method: str, ratio: float) -> str:
    """The correction actually applied: ``sampler``, ``loss`` or ``none``."""
    if method not in BALANCE_METHODS:
        raise ValueError(f"balance method {method!r} is not one of {', '.join(BALANCE_METHODS)}")
    if method != "auto":
        return method
    if ratio < IMBALANCED_RATIO:
        return "none"
    return "sampler" if ratio >= SAMPLER_RATIO else "loss"


def probe_class_weight(balance: str) -> str | None:
    """The linear probe's class weighting for an applied correction (from :func:`resolve_balance`):
    any correction weights the probe's loss, since a probe has no sampler."""
    return "balanced" if balance != "none" else None


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``n / (k * count)`` per class (scikit-learn's "balanced"); 0 for a class with no image."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_classes).astype(float)
    k = int((counts > 0).sum())
    return np.divide(len(labels), k * counts, out=np.zeros(num_classes), where=counts > 0)


def sample_probabilities(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-image drawing probabilities that give every class the same expected share of a batch."""
    w = class_weights(labels, num_classes)[np.asarray(labels, dtype=int)]
    return w / w.sum()


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Mean F1 over the classes present in ``y_true`` (a never-predicted class scores 0)."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    scores = []
    for c in range(num_classes):
        support = int((y_true == c).sum())
        if support == 0:
            continue
        tp = int(((y_true == c) & (y_pred == c)).sum())
        predicted = int((y_pred == c).sum())
        p = tp / predicted if predicted else 0.0
        r = tp / support
        scores.append(2 * p * r / (p + r) if p + r else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def collapsed_class(y_pred: np.ndarray, y_true: np.ndarray) -> int | None:
    """The one class predicted for every image when the true labels have several, else None."""
    predicted = Counter(np.asarray(y_pred, dtype=int).tolist())
    if len(predicted) == 1 and len(set(np.asarray(y_true, dtype=int).tolist())) > 1:
        return next(iter(predicted))
    return None

"""95% confidence intervals for per-class metrics: validation sets are small, so say how small.

Precision, recall and accuracy are proportions: Wilson score intervals (good down to a handful of
images, unlike the normal approximation). F1 is not a proportion: percentile bootstrap over images.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``successes / trials``; (0, 1) when there are no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_interval(metrics: dict) -> tuple[float, float] | None:
    """The Wilson 95% interval of ``metrics``' accuracy, for printing: from its counts where it has
    them, since a metrics.json written before the interval was kept unrounded holds it to 4 decimals
    (0.711484 as 0.7115, printed 71.2% where the exact figure is 71.1%). None when it has no interval
    (older runs)."""
    ci = metrics.get("accuracy_ci")
    if ci is None:
        return None
    n, errors = metrics.get("n"), metrics.get("errors")
    return wilson(n - errors, n) if n is not None and errors is not None else (ci[0], ci[1])


def _f1_per_class(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    tp = np.bincount(y_true[y_true == y_pred], minlength=k).astype(float)
    pred = np.bincount(y_pred, minlength=k).astype(float)
    sup = np.bincount(y_true, minlength=k).astype(float)
    denom = pred + sup
    return np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)


def bootstrap_f1(y_true: np.ndarray, y_pred: np.ndarray, k: int, reps: int = 1000, seed: int = 0) -> np.ndarray:
    """``k x 2`` percentile intervals of per-class F1 (images resampled with replacement)."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    n = len(y_true)
    if n == 0:
        return np.tile([0.0, 1.0], (k, 1))
    rng = np.random.default_rng(seed)
    samples = np.empty((reps, k))
    for r in range(reps):
        idx = rng.integers(0, n, n)
        samples[r] = _f1_per_class(y_true[idx], y_pred[idx], k)
    return np.percentile(samples, [2.5, 97.5], axis=0).T


def metrics_with_intervals(metrics: dict, y_true: np.ndarray, y_pred: np.ndarray, seed: int = 0) -> dict:
    """Add ``*_ci`` (95%) to each class of ``classification_metrics`` output, plus weighted
    averages and an accuracy interval; returns a new dict."""
    out = {**metrics, "per_class": {c: dict(v) for c, v in metrics["per_class"].items()}}
    classes = metrics["classes"]
    cm = np.asarray(metrics["confusion_matrix"])
    f1_ci = bootstrap_f1(y_true, y_pred, len(classes), seed=seed)
    for i, c in enumerate(classes):
        row = out["per_class"][c]
        tp = int(cm[i, i])
        # No interval for a value that is undefined (None): (0, 1) would read as a measurement.
        row["precision_ci"] = wilson(tp, int(cm[:, i].sum())) if row["precision"] is not None else None
        row["recall_ci"] = wilson(tp, int(cm[i].sum())) if row["recall"] is not None else None
        row["f1_ci"] = (float(f1_ci[i, 0]), float(f1_ci[i, 1])) if row["f1"] is not None else None
    out["weighted_avg"] = {m: _weighted_defined([out["per_class"][c] for c in classes], m)
                           for m in ("precision", "recall", "f1")}
    out["accuracy_ci"] = wilson(int(np.trace(cm)), int(cm.sum()))
    return out


def _weighted_defined(rows: list[dict], key: str) -> float | None:
    """The support-weighted mean of ``key`` over the rows where it is defined (not None), as the
    macro averages skip undefined values; None when no row with images has it."""
    pairs = [(r[key], r["support"]) for r in rows if r[key] is not None and r["support"]]
    total = sum(w for _, w in pairs)
    return float(sum(v * w for v, w in pairs) / total) if total else None

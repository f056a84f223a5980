"""Classification metrics as plain JSON-ready dicts: accuracy, per-class P/R/F1, confusion matrix."""

from __future__ import annotations

import numpy as np

from vistrain.evaluation.intervals import wilson


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Everything a reader needs to judge a classifier on one labelled set.

    Precision of a class never predicted is reported as 0 (and its F1 as 0), as scikit-learn does
    with ``zero_division=0``; the confusion matrix has true classes as rows.
    """
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    k = len(classes)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    support = cm.sum(axis=1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    n = len(y_true)
    present = support > 0
    per_class = {
        c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
        for i, c in enumerate(classes)
    }
    lo, hi = wilson(int(tp.sum()), n)
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        # Wilson 95% interval: 12 test images at 10 right span 55-95%; say so wherever accuracy is said.
        "accuracy_ci": [round(lo, 4), round(hi, 4)],
        "errors": int(n - tp.sum()),
        "classes": list(classes),
        "per_class": per_class,
        "macro_avg": {
            "precision": float(precision[present].mean()) if present.any() else 0.0,
            "recall": float(recall[present].mean()) if present.any() else 0.0,
            "f1": float(f1[present].mean()) if present.any() else 0.0,
        },
        "confusion_matrix": cm.tolist(),
    }


def most_confused(cm: np.ndarray, n: int) -> list[int]:
    """Indices of the ``n`` classes most involved in errors (their row's plus their column's
    off-diagonal counts), in class order: the part of a matrix too big to show that is worth showing.
    Ties, and classes with no errors at all when fewer than ``n`` have any, go by class order."""
    cm = np.asarray(cm)
    off = cm - np.diag(np.diag(cm))
    involvement = off.sum(axis=0) + off.sum(axis=1)
    chosen = np.argsort(-involvement, kind="stable")[:n]
    return sorted(int(i) for i in chosen)

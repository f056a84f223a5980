"""Abstention: answer only when confident enough, and know what that costs in coverage.

Sorting images by top probability and answering the most confident first gives the
accuracy-versus-coverage curve; the threshold for a target precision is the lowest confidence at
which the answered images are still right often enough.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vistrain.thresholds import threshold_between


@dataclass
class CoverageCurve:
    thresholds: np.ndarray  # distinct confidences, high to low: answer when top probability >= t
    coverage: np.ndarray  # share of images answered at each threshold
    accuracy: np.ndarray  # share of answered images that are right (the precision of the answers)


def coverage_curve(probabilities: np.ndarray, labels: np.ndarray) -> CoverageCurve:
    conf = probabilities.max(axis=1)
    right = (probabilities.argmax(axis=1) == np.asarray(labels)).astype(float)
    order = np.argsort(-conf, kind="stable")
    conf, right = conf[order], right[order]
    answered = np.arange(1, len(conf) + 1)
    correct = np.cumsum(right)
    # Ties answer together: keep the last position of each distinct confidence.
    last = np.r_[conf[1:] != conf[:-1], True] if len(conf) else np.array([], dtype=bool)
    return CoverageCurve(conf[last], answered[last] / max(len(conf), 1), correct[last] / answered[last])


@dataclass
class Abstention:
    target_precision: float
    threshold: float | None  # None: no threshold reaches the target on these images
    coverage: float  # share answered at the threshold
    precision: float  # accuracy of the answered images at the threshold
    n: int

    def to_dict(self) -> dict:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def threshold_for_precision(probabilities: np.ndarray, labels: np.ndarray, target: float = 0.95) -> Abstention:
    """The threshold with the most coverage whose answered images reach ``target`` precision."""
    if not 0 < target <= 1:
        raise ValueError(f"target precision {target} must be within (0, 1]")
    curve = coverage_curve(probabilities, labels)
    ok = np.flatnonzero(curve.accuracy >= target - 1e-12)
    if len(ok) == 0:
        return Abstention(target, None, 0.0, 0.0, len(labels))
    best = ok[np.argmax(curve.coverage[ok])]
    flagged = curve.thresholds[best + 1] if best + 1 < len(curve.thresholds) else None
    return Abstention(target, threshold_between(curve.thresholds[best], flagged), float(curve.coverage[best]),
                      float(curve.accuracy[best]), len(labels))


def apply_threshold(probabilities: np.ndarray, labels: np.ndarray, threshold: float | None) -> tuple[float, float]:
    """(coverage, precision) of a given threshold on other images, e.g. a test set."""
    conf = probabilities.max(axis=1)
    answered = conf >= threshold if threshold is not None else np.ones(len(conf), dtype=bool)
    if not answered.any():
        return 0.0, 0.0
    right = probabilities.argmax(axis=1) == np.asarray(labels)
    return float(answered.mean()), float(right[answered].mean())

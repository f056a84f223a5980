"""Honest confidence: temperature scaling fitted on validation logits, ECE and reliability bins.

A network's softmax is usually over-confident after training; dividing the logits by one scalar
``T`` (Guo et al., "On Calibration of Modern Neural Networks", 2017) fixes most of that without
changing any prediction. ``T`` is chosen to minimise the negative log-likelihood of the labels.

Fitted and judged on the same few validation images, ``T`` always looks better than 1 by NLL,
and yet it can hurt new images: on the 80 validation digits of the README's demo, T = 1.24
lowered the in-sample NLL (0.635 -> 0.613) but raised the 5-fold held-out NLL to 0.882 and the
binned calibration error from 6.9% to 11.3%. So ``T`` is applied only when, fitted on four
fifths of the images, it lowers the NLL of the fifth left out, summed over the five folds (and
never with fewer than 10 validation images, too few to check it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vistrain.evaluation.predictor import softmax

# A scalar on a log scale: T outside this range means the logits carry no usable confidence.
_LOG_T_RANGE = (math.log(0.05), math.log(20.0))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, iterations: int = 60) -> float:
    """The ``T`` minimising NLL, by golden-section search on log T (the NLL is unimodal in it)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=int)
    if len(labels) == 0:
        raise ValueError("cannot fit a temperature on zero images")
    lo, hi = _LOG_T_RANGE
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    for _ in range(iterations):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
    return float(math.exp((lo + hi) / 2))


@dataclass
class ReliabilityBin:
    low: float
    high: float
    count: int
    confidence: float  # mean top probability in the bin (0 when empty)
    accuracy: float  # share of right answers in the bin (0 when empty)


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> list[ReliabilityBin]:
    """Equal-width bins of top-class confidence, each with its mean confidence and accuracy."""
    conf = probabilities.max(axis=1)
    right = probabilities.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin i holds (edge_i, edge_i+1]; a confidence of exactly 0 cannot occur for a top class.
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    bins = []
    for i in range(n_bins):
        sel = which == i
        n = int(sel.sum())
        bins.append(ReliabilityBin(float(edges[i]), float(edges[i + 1]), n,
                                   float(conf[sel].mean()) if n else 0.0, float(right[sel].mean()) if n else 0.0))
    return bins


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """Sum over bins of |accuracy - confidence| weighted by the bin's share of images."""
    n = len(labels)
    if n == 0:
        return 0.0
    return float(sum(b.count / n * abs(b.accuracy - b.confidence) for b in reliability_bins(probabilities, labels, n_bins)))


@dataclass
class Calibration:
    temperature: float  # the one applied: the fitted one, or 1 when it did not help held-out images
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    n: int
    fitted_temperature: float = 1.0  # fitted on every image, before the held-out check
    heldout_nll_raw: float | None = None  # k-fold held-out NLL at T = 1 (None: too few images to fold)
    heldout_nll_scaled: float | None = None  # ... with T fitted on the other folds

    def to_dict(self) -> dict:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in self.__dict__.items()}

    @property
    def rejected(self) -> bool:
        """A temperature was fitted but did not help the images it was not fitted on."""
        return set_aside(self.to_dict())


def set_aside(calibration: dict) -> bool:
    """Whether a stored calibration (``Calibration.to_dict``, as in ``config.json``) fitted a
    temperature and then kept the raw softmax (older runs lack ``fitted_temperature``: False)."""
    return calibration.get("temperature", 1.0) == 1.0 and calibration.get("fitted_temperature", 1.0) != 1.0


def _fit_or_one(logits: np.ndarray, labels: np.ndarray) -> float:
    # With no error to learn from, a lower T always lowers the NLL, down to certainty on every
    # image: nothing supports that, so the raw softmax stays.
    return 1.0 if (np.asarray(logits).argmax(axis=1) == labels).all() else fit_temperature(logits, labels)


def heldout_nll(logits: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> tuple[float, float] | None:
    """Mean NLL of each image while left out, at T = 1 and at T fitted on the other folds.
    None when there are fewer than two images per fold."""
    n = len(labels)
    if n < 2 * folds:
        return None
    order = np.random.default_rng(seed).permutation(n)
    raw = scaled = 0.0
    for held in np.array_split(order, folds):
        rest = np.setdiff1d(order, held)
        t = _fit_or_one(logits[rest], labels[rest])
        raw += nll(logits[held], labels[held], 1.0) * len(held)
        scaled += nll(logits[held], labels[held], t) * len(held)
    return raw / n, scaled / n


def calibrate(logits: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> Calibration:
    """Fit ``T`` on these logits (1 when every image is right), keep it only if it also lowers the
    held-out NLL (see the module's note), and report ECE and NLL at T = 1 and at the T applied."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=int)
    fitted = _fit_or_one(logits, labels)
    check = heldout_nll(logits, labels) if fitted != 1.0 else None
    # Too few images to check it on held-out ones: nothing supports the fitted T either.
    t = fitted if check is not None and check[1] < check[0] else 1.0
    return Calibration(
        temperature=t,
        ece_before=expected_calibration_error(softmax(logits, 1.0), labels, n_bins),
        ece_after=expected_calibration_error(softmax(logits, t), labels, n_bins),
        nll_before=nll(logits, labels, 1.0),
        nll_after=nll(logits, labels, t),
        n=len(labels),
        fitted_temperature=fitted,
        heldout_nll_raw=None if check is None else check[0],
        heldout_nll_scaled=None if check is None else check[1],
    )

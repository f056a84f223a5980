"""Linear probe: multinomial logistic regression on frozen features, folded into a linear head."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression


def fit_probe(
    features: np.ndarray, labels: np.ndarray, num_classes: int, C: float = 0.3, seed: int = 0,
    class_weight: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``(num_classes, F)`` and bias ``(num_classes,)`` for a head on raw features.

    Features are standardised for the fit (so ``C`` means the same for every backbone), then the
    scaling is folded into the weights: the head applies to unscaled features and gives the same
    logits as the fitted model. ``class_weight="balanced"`` weighs each image by the inverse
    frequency of its class (the probe's imbalance correction: on a full-batch fit, resampling and
    weighting are the same thing).
    """
    mu = features.mean(axis=0)
    sigma = features.std(axis=0) + 1e-6
    z = (features - mu) / sigma
    lr = LogisticRegression(C=C, max_iter=2000, random_state=seed, class_weight=class_weight)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        lr.fit(z, labels)
    coef = np.zeros((num_classes, features.shape[1]))
    intercept = np.zeros(num_classes)
    present = lr.classes_.astype(int)
    if len(present) == 2 and coef.shape[0] >= 2:
        # sklearn's binary model has one row: logit(class 1) - logit(class 0).
        coef[present[1]], intercept[present[1]] = lr.coef_[0], lr.intercept_[0]
    else:
        coef[present], intercept[present] = lr.coef_, lr.intercept_
        missing = np.setdiff1d(np.arange(num_classes), present)
        intercept[missing] = -1e4  # a class absent from training is never predicted
    w = coef / sigma
    b = intercept - (coef * (mu / sigma)).sum(axis=1)
    return torch.tensor(w, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)


def probe_logits(features: np.ndarray, w: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return features @ w.numpy().T + b.numpy()

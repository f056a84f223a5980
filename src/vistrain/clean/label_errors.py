"""Likely label errors and outliers from frozen features.

Out-of-fold probabilities come from the same linear probe vistrain trains (k-fold, so no image is
scored by a model that saw it). Label issues follow confident learning (Northcutt, Jiang & Chuang,
"Confident Learning: Estimating Uncertainty in Dataset Labels", JAIR 2021), implemented here from
the paper (cleanlab itself is AGPL): per-class thresholds, the calibrated confident joint, and
"prune by noise rate"; issues are ranked by self-confidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, num_classes: int, folds: int = 5,
                              seed: int = 0, C: float = 0.3, groups: np.ndarray | None = None) -> np.ndarray:
    """``N x K`` probabilities, each row from a probe fitted on the other folds.

    ``groups``: duplicate-cluster ids; a cluster stays in one fold, else a copy in the training folds
    vouches for its twin (measured on climbing: both copies of a photo filed under two labels were
    each "confidently" predicted as the other copy's label).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    from vistrain.training.probe import fit_probe, probe_logits

    smallest = int(np.bincount(labels, minlength=num_classes)[np.unique(labels)].min())
    k = max(2, min(folds, smallest))
    probs = np.zeros((len(labels), num_classes))
    groups = np.arange(len(labels)) if groups is None else groups
    splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
    for fit_idx, held_idx in splitter.split(features, labels, groups):
        w, b = fit_probe(features[fit_idx], labels[fit_idx], num_classes, C=C, seed=seed)
        logits = probe_logits(features[held_idx], w, b)
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        probs[held_idx] = e / e.sum(axis=1, keepdims=True)
    return probs


@dataclass
class LabelIssues:
    issues: np.ndarray  # indices, most suspicious first
    self_confidence: np.ndarray  # p(given label), every sample
    predicted: np.ndarray  # argmax class, every sample
    confident_joint: np.ndarray  # K x K calibrated counts: rows given label, columns true label


def confident_joint(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Calibrated confident joint C[given, true] (paper, eqs. 1-2)."""
    k = probs.shape[1]
    counts = np.bincount(labels, minlength=k)
    # t_j: the average probability of class j over the samples labelled j.
    thresholds = np.array([probs[labels == j, j].mean() if counts[j] else 1.0 for j in range(k)])
    above = probs >= thresholds - 1e-9
    confident = np.where(above, probs, -np.inf).argmax(axis=1)
    has = above.any(axis=1)
    joint = np.zeros((k, k))
    np.add.at(joint, (labels[has], confident[has]), 1)
    rows = joint.sum(axis=1, keepdims=True)
    # Calibrate: each row sums to the number of samples given that label.
    return np.divide(joint, rows, out=np.zeros_like(joint), where=rows > 0) * counts[:, None]


def find_label_issues(labels: np.ndarray, probs: np.ndarray) -> LabelIssues:
    """Prune by noise rate: from the samples labelled i, the round(C[i, j]) with the largest
    margin p_j - p_i are issues (i != j); a sample whose given label is its argmax is never one."""
    joint = confident_joint(labels, probs)
    n = len(labels)
    flagged = np.zeros(n, dtype=bool)
    for i in range(probs.shape[1]):
        members = np.flatnonzero(labels == i)
        for j in range(probs.shape[1]):
            take = int(np.rint(joint[i, j]))
            if i == j or take == 0 or len(members) == 0:
                continue
            margin = probs[members, j] - probs[members, i]
            flagged[members[np.argsort(-margin, kind="stable")[:take]]] = True
    predicted = probs.argmax(axis=1)
    flagged &= predicted != labels
    self_conf = probs[np.arange(n), labels]
    issues = np.flatnonzero(flagged)
    issues = issues[np.argsort(self_conf[issues], kind="stable")]
    return LabelIssues(issues, self_conf, predicted, joint)


def knn_distances(unit: np.ndarray, k: int = 5, block: int = 1024) -> np.ndarray:
    """Mean cosine distance of each row of ``unit`` (L2-normalised) to its ``k`` nearest other rows."""
    n = len(unit)
    k = min(k, n - 1)
    out = np.zeros(n)
    if k < 1:
        return out
    for start in range(0, n, block):
        sim = unit[start : start + block] @ unit.T
        rows = np.arange(sim.shape[0])
        sim[rows, start + rows] = -np.inf  # not its own neighbour
        top = -np.partition(-sim, k - 1, axis=1)[:, :k]
        out[start : start + block] = 1.0 - top.mean(axis=1)
    return out


def similar_pairs(unit: np.ndarray, min_cosine: float, block: int = 1024) -> list[tuple[int, int, float]]:
    """Every pair (i, j, cosine) with i < j and cosine similarity of at least ``min_cosine``."""
    out = []
    for start in range(0, len(unit), block):
        sim = unit[start : start + block] @ unit.T
        rows, cols = np.nonzero(sim >= min_cosine)
        for r, c in zip(rows, cols):
            i = start + int(r)
            if int(c) > i:
                out.append((i, int(c), float(sim[r, c])))
    return out


def robust_outliers(distances: np.ndarray, z: float) -> np.ndarray:
    """Indices whose distance lies more than ``z`` robust standard deviations (MAD) above the median,
    farthest first."""
    med = np.median(distances)
    mad = np.median(np.abs(distances - med)) * 1.4826 + 1e-12
    idx = np.flatnonzero((distances - med) / mad > z)
    return idx[np.argsort(-distances[idx], kind="stable")]

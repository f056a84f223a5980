"""Is a photo like the ones the model was trained on? The cosine similarity of its pooled features
to the nearest training photo's (Sun et al., "Out-of-Distribution Detection with Deep Nearest
Neighbors", ICML 2022), against a threshold that keeps 99% of the validation photos familiar.

Why not the softmax alone: a classifier answers every photo with one of its classes, and often
confidently. Measured with the default (fine-tuned) climbing model, at thresholds that keep 99% of
its validation photos (benchmarks/familiarity.py): the top probability flagged 22% of 200 clothing
photos and 51% of 200 handwritten digits; the nearest-neighbour similarity flagged all of both
(median similarity 0.40 and 0.23, against 0.72 for the validation photos) and none of the 12 test
photos. What it does not catch is a new class from the same world: with one climbing style left
out of the bank (frozen features), 0-32% of that style's photos were flagged. It answers "unlike
anything trained on", not "a class not listed".

Torch-free (NumPy and safetensors): the PyTorch predictor, ONNX Runtime and the server share it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vistrain.thresholds import threshold_between

FAMILIAR_FILE = "familiar.safetensors"
KEEP = 0.99  # share of the validation photos the threshold keeps familiar
MAX_BANK = 1000  # training photos kept as neighbours (a seeded sample per class beyond it)


def normalise(features: np.ndarray, blocks: list[int]) -> np.ndarray:
    """Each block (an ensemble member's features) scaled to unit length, then all by 1/sqrt(blocks):
    the dot product of two rows is then the mean of the members' cosine similarities."""
    features = np.asarray(features, dtype=np.float32)
    parts = np.split(features, np.cumsum(blocks)[:-1], axis=1)
    unit = [p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12) for p in parts]
    return np.hstack(unit) / np.sqrt(len(blocks))


def bank_sample(labels: np.ndarray, limit: int = MAX_BANK, seed: int = 0) -> np.ndarray:
    """Indices of at most ``limit`` training photos, each class kept in proportion (at least one each)."""
    labels = np.asarray(labels)
    if len(labels) <= limit:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        take = max(1, int(limit * len(idx) / len(labels)))
        chosen.append(rng.choice(idx, size=min(take, len(idx)), replace=False))
    return np.sort(np.concatenate(chosen))


@dataclass
class Familiarity:
    bank: np.ndarray  # N x D, rows normalised (:func:`normalise`)
    blocks: list[int]  # feature widths of the backbone's members (one for a single backbone)
    threshold: float  # similarities below it are unfamiliar
    keep: float = KEEP
    n_valid: int = 0  # validation photos the threshold was set on
    n_kept: int = 0  # of them, those at or above it

    @classmethod
    def fit(cls, train_features: np.ndarray, valid_features: np.ndarray, blocks: list[int],
            keep: float = KEEP) -> Familiarity:
        """The bank of training features and the similarity that ``keep`` of the validation photos reach."""
        if len(train_features) == 0 or len(valid_features) == 0:
            raise ValueError("familiarity needs training and validation features")
        bank = normalise(train_features, blocks).astype(np.float16)
        sims = nearest(bank, normalise(valid_features, blocks))
        threshold = cls.threshold_for(sims, keep)
        return cls(bank, list(blocks), threshold, keep, len(sims), int((sims >= threshold).sum()))

    @staticmethod
    def threshold_for(similarities: np.ndarray, keep: float = KEEP) -> float:
        """A similarity that ``keep`` of these (validation) photos reach, halfway to the most similar
        photo flagged (:func:`~vistrain.thresholds.threshold_between`): the rule every
        familiarity threshold follows."""
        sims = np.sort(np.asarray(similarities, dtype=np.float64))
        k = int(np.floor((1.0 - keep) * (len(sims) - 1)))  # numpy's "lower" quantile: sims[k] is kept
        return threshold_between(sims[k], sims[k - 1] if k > 0 else None)

    def with_threshold(self, threshold: float) -> Familiarity:
        return replace(self, threshold=float(threshold))

    def similarity(self, features: np.ndarray) -> np.ndarray:
        """Cosine similarity of each row of pooled ``features`` to its nearest training photo."""
        return nearest(self.bank, normalise(features, self.blocks))

    def familiar(self, similarity: np.ndarray) -> np.ndarray:
        return np.asarray(similarity) >= self.threshold

    def verdict(self, similarity: float) -> bool:
        """One image's ``familiar`` answer, as a plain bool (for JSON and ``Prediction``)."""
        return bool(similarity >= self.threshold)

    def save(self, folder: Path) -> Path:
        path = Path(folder) / FAMILIAR_FILE
        path.write_bytes(safetensors_bytes({"bank": np.ascontiguousarray(self.bank)}, {
            "threshold": repr(self.threshold), "keep": repr(self.keep), "n_valid": str(self.n_valid), "n_kept": str(self.n_kept),
            "blocks": ",".join(str(b) for b in self.blocks),
            "what": "L2-normalised pooled features of training photos; nearest-neighbour similarity"}))
        return path

    @classmethod
    def load(cls, folder: Path) -> Familiarity | None:
        """The run's (or export's) familiarity check, or None when it has none (runs before it)."""
        from safetensors import safe_open

        path = Path(folder) / FAMILIAR_FILE
        if not path.is_file():
            return None
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
            bank = f.get_tensor("bank")
        try:
            return cls(bank, [int(b) for b in meta["blocks"].split(",")], float(meta["threshold"]),
                       float(meta.get("keep", KEEP)), int(meta.get("n_valid", 0)), int(meta.get("n_kept", 0)))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{path}: not a vistrain familiarity file ({exc})") from None

    def describe(self) -> str:
        text = (f"photos unlike the {len(self.bank)} training photos kept as neighbours are flagged unfamiliar "
                f"(cosine similarity to the nearest below {self.threshold:.3f}; {self.n_kept} of {self.n_valid} "
                f"validation photos reach it)")
        if self.n_valid and self.n_valid + 1 < 1 / (1 - self.keep):
            # Exchangeable photos: a new one falls below the lowest of n with probability 1/(n+1).
            text += (f"; with {self.n_valid} validation photos, about 1 in {self.n_valid + 1} ordinary photos "
                     f"may be flagged too")
        return text


def unfamiliar_summary(familiarity: Familiarity, similarity: np.ndarray, y_true: np.ndarray,
                       y_pred: np.ndarray) -> dict:
    """How many scored images are unlike every training photo, and the accuracy on them and on the
    rest (``evaluate --json``'s ``unfamiliar``). NaN similarities (files that failed) count as neither."""
    similarity = np.asarray(similarity, dtype=np.float64)
    known = ~np.isnan(similarity)
    odd = known & ~familiarity.familiar(np.nan_to_num(similarity, nan=np.inf))
    rest = known & ~odd
    right = np.asarray(y_pred) == np.asarray(y_true)
    return {"n": int(odd.sum()), "threshold": familiarity.threshold,
            "accuracy_unfamiliar": float(right[odd].mean()) if odd.any() else None,
            "accuracy_familiar": float(right[rest].mean()) if rest.any() else None}


def describe_unfamiliar(u: dict, n: int) -> str:
    """One sentence for a terminal or a page, or "" when no image is unfamiliar."""
    if not u or not u["n"]:
        return ""
    return (f"{u['n']} of these {n} images are unlike every training photo (similarity below "
            f"{u['threshold']:.3f}): {u['accuracy_unfamiliar']:.1%} right on them"
            + (f", {u['accuracy_familiar']:.1%} on the rest" if u["accuracy_familiar"] is not None else "") + ".")


def nearest(bank: np.ndarray, rows: np.ndarray, chunk: int = 256) -> np.ndarray:
    bank32 = bank.astype(np.float32)
    # At most 1: a training photo met again scored 1.0001 against its float16 copy in the bank.
    out = [np.minimum((rows[i : i + chunk] @ bank32.T).max(axis=1), 1.0) for i in range(0, len(rows), chunk)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def pooled(feature_map: np.ndarray) -> np.ndarray:
    """An ``N x C x h x w`` feature map (the ONNX export's ``features``) -> ``N x C`` pooled features,
    as every backbone here pools: the mean over positions."""
    return np.asarray(feature_map, dtype=np.float32).mean(axis=(2, 3))


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """A safetensors file whose header lists its keys sorted, so the same run writes the same bytes.

    The safetensors library keeps metadata in a hash map, which orders it differently in each
    process; the header is re-written sorted (same length, same padding), the data left as it is.
    """
    from safetensors.numpy import save

    raw = save(tensors, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8 : 8 + n]), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    header += b" " * (-len(header) % 8)  # the data starts 8-byte aligned, as the library writes it
    return len(header).to_bytes(8, "little") + header + raw[8 + n :]

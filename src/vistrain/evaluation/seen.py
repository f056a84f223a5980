"""Which of the images being scored the run has already seen (its ``split.csv``).

Scored on its own training folder, a model looks far better than it will be on new photos (the
digits demo: 98.2% on all 400 images, 91.2% on its 80 validation images), so ``evaluate`` and
``report`` say how many images the run trained on or chose its settings with, and score the rest
apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vistrain.data.split import split_rows


def overlap_with_run(run_dir: Path, extra: dict, paths: list[str], y_true: np.ndarray,
                     y_pred: np.ndarray, sha1s: list[str | None] | None = None) -> dict | None:
    """``{"train": n, "valid": n, "new": n, "accuracy_new": float | None}`` for ``paths``, or None
    when the run has seen none of them (or has no ``split.csv``). An image counts as seen at the
    path the run listed it under, or anywhere with the same content (``sha1s``, when given: a copy
    of the training folder). ``extra``: the run's config extras, which name the training data
    folder that relative paths in ``split.csv`` start from."""
    split_file = Path(run_dir) / "split.csv"
    if not split_file.is_file():
        return None
    rows = split_rows(split_file, extra)
    by_path = {found.resolve(): split for found, _, split, _ in rows if found is not None}
    by_content = {sha1: split for _, _, split, sha1 in rows if sha1 and split in ("train", "valid")}
    sha1s = sha1s or [None] * len(paths)
    where = [by_path.get(Path(p).resolve()) or (by_content.get(h) if h else None) for p, h in zip(paths, sha1s)]
    n_train, n_valid = where.count("train"), where.count("valid")
    if not (n_train or n_valid):
        return None
    new = np.array([w not in ("train", "valid") for w in where])
    out = {"train": n_train, "valid": n_valid, "new": int(new.sum()), "accuracy_new": None}
    if new.any():
        out["accuracy_new"] = float((np.asarray(y_pred)[new] == np.asarray(y_true)[new]).mean())
    return out


def describe_overlap(o: dict, n: int, split_file: str) -> str:
    """One sentence for a terminal or a page; ``split_file`` names where the run lists its images."""
    used = " and ".join(part for part in (f"{o['train']} trained it" if o["train"] else "",
                                          f"{o['valid']} chose its settings" if o["valid"] else "") if part)
    text = f"Of these {n} images, {used} ({split_file}): the accuracy above is optimistic. "
    if o["accuracy_new"] is None:
        return text + "None of them is new to the model."
    return text + f"On the {o['new']} new to it: {o['accuracy_new']:.1%}."

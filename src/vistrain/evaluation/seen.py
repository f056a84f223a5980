"""Which of the images being scored the run has already seen (its ``split.csv``).

Scored on its own training folder, a model looks far better than it will be on new photos (the
digits demo: 98.2% on all 400 images, 91.2% on its 80 validation images), so ``evaluate`` and
``report`` say how many images the run trained on or chose its settings with, and score the rest
apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from vistrain.data.phash import NEAR_BITS, hash_array, same_colours
from vistrain.data.split import SplitRow, split_rows


class Look(NamedTuple):
    """What an image is, apart from where: its bytes' SHA-1, perceptual hash and colours (from the scan)."""

    sha1: str | None
    phash: str | None = None
    colour: str | None = None


def overlap_with_run(run_dir: Path, extra: dict, paths: list[str], y_true: np.ndarray,
                     y_pred: np.ndarray, looks: list[Look | None] | None = None) -> dict | None:
    """``{"train": n, "valid": n, "new": n, "accuracy_new": float | None, "near": n}`` for ``paths``,
    or None when the run has seen none of them (or has no ``split.csv``). An image counts as seen at
    the path the run listed it under; anywhere with the same bytes (a copy of the training folder);
    or, ``near`` of them, with the same look as the duplicate check's: perceptual hashes within
    ``NEAR_BITS`` and the same colours (a resized or re-encoded copy, or a near-identical shot).
    ``extra``: the run's config extras, which name the training data folder that relative paths in
    ``split.csv`` start from."""
    split_file = Path(run_dir) / "split.csv"
    if not split_file.is_file():
        return None
    rows = [r for r in split_rows(split_file, extra) if r.split in ("train", "valid")]
    by_path = {r.found.resolve(): r.split for r in rows if r.found is not None}
    by_content = {r.sha1: r.split for r in rows if r.sha1}
    looks = looks or [None] * len(paths)
    where = [by_path.get(Path(p).resolve()) or (by_content.get(k.sha1) if k and k.sha1 else None)
             for p, k in zip(paths, looks)]
    near = _near_matches(rows, [k if w is None else None for w, k in zip(where, looks)])
    where = [w or n for w, n in zip(where, near)]
    n_train, n_valid = where.count("train"), where.count("valid")
    if not (n_train or n_valid):
        return None
    new = np.array([w not in ("train", "valid") for w in where])
    out = {"train": n_train, "valid": n_valid, "new": int(new.sum()), "accuracy_new": None,
           "near": sum(n is not None for n in near)}
    if new.any():
        out["accuracy_new"] = float((np.asarray(y_pred)[new] == np.asarray(y_true)[new]).mean())
    return out


def _near_matches(rows: list[SplitRow], looks: list[Look | None]) -> list[str | None]:
    """For each look, the split of the run's nearest image with the same look, or None."""
    known = [r for r in rows if r.phash]
    if not known:
        return [None] * len(looks)
    hashes = hash_array([r.phash for r in known])
    out: list[str | None] = []
    for k in looks:
        match = None
        if k is not None and k.phash:
            d = np.bitwise_count(hashes ^ hash_array([k.phash])[0])
            for j in np.argsort(d, kind="stable"):
                if d[j] > NEAR_BITS:
                    break
                if same_colours(known[j].colour, k.colour):
                    match = known[j].split
                    break
        out.append(match)
    return out


def describe_overlap(o: dict, n: int, split_file: str) -> str:
    """One sentence for a terminal or a page; ``split_file`` names where the run lists its images."""
    used = " and ".join(part for part in (f"{o['train']} trained it" if o["train"] else "",
                                          f"{o['valid']} chose its settings" if o["valid"] else "") if part)
    near = (f"; {o['near']} of them by their look alone: resized or re-encoded copies, or near-identical shots"
            if o.get("near") else "")
    text = f"Of these {n} images, {used} ({split_file}{near}): the accuracy above is optimistic. "
    if o["accuracy_new"] is None:
        return text + "None of them is new to the model."
    return text + f"On the {o['new']} not recognised as its own: {o['accuracy_new']:.1%}."

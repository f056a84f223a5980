"""Seeded, stratified train/valid split, written to and read from ``split.csv``."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from vistrain.data.layout import DataError
from vistrain.data.scan import Record


def stratified_split(records: list[Record], valid_fraction: float, seed: int) -> None:
    """Assign ``split`` to records that have none: per class, ``valid_fraction`` goes to valid.

    Each class keeps at least one image on each side, so a class needs two usable images.
    The order of files on disk does not matter: they are sorted by path before shuffling.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise DataError(f"validation fraction {valid_fraction} must be between 0 and 1")
    by_class: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if r.split is None:
            by_class[r.label].append(r)
    too_few = {c: len(rs) for c, rs in by_class.items() if len(rs) < 2}
    if too_few:
        listing = ", ".join(f"{c!r} ({n} image)" for c, n in sorted(too_few.items()))
        raise DataError(
            f"class(es) with too few images to split into train and valid: {listing}; "
            "each class needs at least 2 usable images (more is much better)"
        )
    rng = np.random.default_rng(seed)
    for label in sorted(by_class):
        group = sorted(by_class[label], key=lambda r: r.path)
        order = rng.permutation(len(group))
        n_valid = min(len(group) - 1, max(1, round(len(group) * valid_fraction)))
        for rank, idx in enumerate(order):
            group[idx].split = "valid" if rank < n_valid else "train"


def write_split(records: list[Record], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for r in records:
            w.writerow([r.path, r.label, r.split])


def read_split(path: Path) -> dict[str, str]:
    with path.open(newline="") as f:
        return {row["path"]: row["split"] for row in csv.DictReader(f)}

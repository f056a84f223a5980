"""Seeded, stratified train/valid split, written to and read from ``split.csv``."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vistrain.data.layout import DataError
from vistrain.data.phash import duplicate_groups
from vistrain.data.scan import Record


def check_valid_fraction(valid_fraction: float) -> None:
    """The share of each class that goes to validation must leave some on each side."""
    if isinstance(valid_fraction, bool) or not isinstance(valid_fraction, (int, float)) or not 0.0 < valid_fraction < 1.0:
        raise DataError(f"validation fraction {valid_fraction!r} must be between 0 and 1")


def stratified_split(records: list[Record], valid_fraction: float, seed: int) -> None:
    """Assign ``split`` to records that have none: per class, ``valid_fraction`` goes to valid.

    Each class keeps at least one image on each side, so a class needs two usable images.
    Duplicates (same bytes, or perceptual hashes within ``NEAR_BITS`` and the same colours) move
    together, so a photo never sits in train and valid at once: such a leak inflates the validation
    score.
    The order of files on disk does not matter: they are sorted by path before shuffling.
    """
    check_valid_fraction(valid_fraction)
    todo = sorted((r for r in records if r.split is None), key=lambda r: r.path)
    by_class: dict[str, list[Record]] = defaultdict(list)
    for r in todo:
        by_class[r.label].append(r)
    too_few = {c: len(rs) for c, rs in by_class.items() if len(rs) < 2}
    if too_few:
        listing = ", ".join(f"{c!r} ({n} image) in {Path(by_class[c][0].path).parent}/" for c, n in sorted(too_few.items()))
        raise DataError(
            f"class(es) with too few images to split into train and valid: {listing}; "
            "each class needs at least 2 usable images (more is much better)"
        )
    # Each duplicate cluster is one unit, filed under its most common label (ties: first by name).
    units: dict[str, list[list[Record]]] = defaultdict(list)
    for idx in duplicate_groups([r.sha1 for r in todo], [r.phash for r in todo],
                                colours=[r.colour for r in todo]):
        members = [todo[i] for i in idx]
        labels = Counter(r.label for r in members)
        home = min(labels, key=lambda c: (-labels[c], c))
        units[home].append(members)
    rng = np.random.default_rng(seed)
    for label in sorted(by_class):
        group = sorted(units[label], key=lambda u: u[0].path)
        if len(group) < 2:
            raise DataError(_unsplittable(label, by_class[label], units))
        order = rng.permutation(len(group))
        n_images = sum(len(u) for u in group)
        n_valid = min(n_images - 1, max(1, round(n_images * valid_fraction)))
        # Units fill valid in shuffled order, none past its share: a burst of ten near-identical shots
        # drawn first would otherwise take a class of 30 to 10 valid, 20 train. At least one unit
        # trains, so both sides keep this class.
        chosen, taken = [], 0
        for idx in order:
            if taken + len(group[idx]) <= n_valid and len(chosen) < len(group) - 1:
                chosen.append(idx)
                taken += len(group[idx])
        if not chosen:  # every unit is bigger than the share: the smallest goes, so the class is validated
            chosen = [min(order, key=lambda i: len(group[i]))]
        for idx in range(len(group)):
            for r in group[idx]:
                r.split = "valid" if idx in chosen else "train"


def _unsplittable(label: str, mine: list[Record], units: dict[str, list[list[Record]]]) -> str:
    """Why ``label`` has fewer than two units. Its images may be copies of photos filed under another
    label (a duplicate group goes to its most common label, ties to the first by name): then the truth
    is a label conflict, not "copies of one photo"."""
    for other in sorted(units):
        if other == label:
            continue
        for unit in units[other]:
            ours = [r for r in unit if r.label == label]
            if ours:
                theirs = next(r for r in unit if r.label == other)
                n = sum(r.label == label for u in units[other] for r in u)
                return (f"class {label!r}: {n} of its {len(mine)} images are copies of photos labelled {other!r} too "
                        f"(a label conflict: e.g. {ours[0].path} is a copy of {theirs.path}); give each photo one "
                        f"label, or split into train/valid folders yourself")
    return (f"class {label!r}: all {len(mine)} images are copies of one photo "
            f"(e.g. {mine[0].path}); add different photos or split into train/valid folders yourself")


def write_split(records: list[Record], path: Path) -> None:
    """``path,label,split,sha1,phash,colour``: the content hash and the look (perceptual hash and
    colours) let ``evaluate`` recognise the run's own images in a copy of the training folder, or
    resized and re-encoded, not only at their original paths."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "sha1", "phash", "colour"])
        for r in records:
            w.writerow([r.path, r.label, r.split, r.sha1 or "", r.phash or "", r.colour or ""])


def read_split(path: Path, column: str = "split") -> dict[str, str]:
    """``split.csv`` as path -> ``column`` (its split, or its label)."""
    with path.open(newline="") as f:
        return {row["path"]: row[column] for row in csv.DictReader(f)}


@dataclass(frozen=True)
class SplitRow:
    found: Path | None  # the file where it now is, or None when it is gone
    label: str
    split: str
    sha1: str = ""  # these three are empty in runs written before they were kept
    phash: str = ""
    colour: str = ""
    listed: Path | None = None  # where the row says the file is (relative paths under the training folder)


def split_rows(split_file: Path, run_extra: dict) -> list[SplitRow]:
    """``split.csv``'s rows. Paths there are absolute when the run was trained on an absolute
    folder; relative ones are tried against the training data folder (named in the run's config,
    ``run_extra``) and then the current directory."""
    root = Path(run_extra.get("training", {}).get("data", {}).get("root", "."))
    rows = []
    with split_file.open(newline="") as f:
        for row in csv.DictReader(f):
            p = Path(row["path"])
            found = next((c for c in ([p] if p.is_absolute() else [root / p, p]) if c.is_file()), None)
            rows.append(SplitRow(found, row.get("label") or "", row.get("split") or "", row.get("sha1") or "",
                                 row.get("phash") or "", row.get("colour") or "", p if p.is_absolute() else root / p))
    return rows

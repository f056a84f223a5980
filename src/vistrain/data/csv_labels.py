"""Layout (d): a CSV file of path,label (and an optional split column), read for :mod:`.layout`.

Builds on :mod:`.entries` (entries, errors, label checks), as :mod:`.layout` does; :func:`.layout.discover`
hands a CSV file here, so this module never imports the layout module.
"""

from __future__ import annotations

import csv
from pathlib import Path

from vistrain.data.entries import (
    TEST_NAMES,
    TRAIN_NAMES,
    VALID_NAMES,
    DataError,
    Entry,
    Layout,
    check_label,
    nfc,
)


def from_csv(path: Path) -> Layout:
    """The layout (d): the rows of ``path``, each path read relative to the CSV's folder."""
    try:
        entries, repeated = _csv_entries(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the CSV as UTF-8") from exc
    has_split = {e.split is not None for e in entries}
    if len(has_split) > 1:
        raise DataError(f"{path}: the 'split' column must be filled on every row or on none")
    notes = [f"{repeated} row(s) of {path.name} repeat a row above (same path, label and split): read once"] if repeated else []
    return Layout("csv", path.resolve().parent, entries, notes)


def _csv_entries(path: Path) -> tuple[list[Entry], int]:
    """The rows as entries, each path once, and how many rows only repeated one above."""
    base = path.resolve().parent
    entries, first_line, repeated = [], {}, 0
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip().lower() for c in (reader.fieldnames or [])]
        if "path" not in fields or "label" not in fields:
            hint = "; separate the columns with commas" if any(";" in c or "\t" in c for c in fields) else ""
            raise DataError(f"{path}: the CSV needs a header with columns 'path' and 'label' (found {fields}){hint}")
        for row in reader:
            lineno = reader.line_num  # the row's last line: a quoted field may span several
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            if not row.get("path") or not row.get("label"):
                raise DataError(f"{path}, line {lineno}: empty path or label")
            label = nfc(row["label"])
            reason = check_label(label)
            if reason:
                raise DataError(f"{path}, line {lineno}: label {label!r} {reason}")
            p = Path(row["path"])
            p = p if p.is_absolute() else base / p
            split = row.get("split") or None
            if split is not None:
                split = _normalise_split(split, path, lineno)
            p = p.resolve()
            if p in first_line:
                # Listed twice, the photo would count twice (or once per label, with no way to know which is right).
                earlier = entries[first_line[p][1]]
                if (earlier.label, earlier.split) != (label, split):
                    raise DataError(f"{path}, lines {first_line[p][0]} and {lineno}: {row['path']} is listed twice, "
                                    f"as {earlier.label!r} ({earlier.split or 'no split'}) and {label!r} "
                                    f"({split or 'no split'}); keep one row")
                repeated += 1
                continue
            first_line[p] = (lineno, len(entries))
            entries.append(Entry(p, label, split))
    return entries, repeated


def _normalise_split(text: str, path: Path, lineno: int) -> str:
    t = text.lower()
    if t in TRAIN_NAMES:
        return "train"
    if t in VALID_NAMES:
        return "valid"
    if t in TEST_NAMES:
        return "test"
    raise DataError(f"{path}, line {lineno}: split {text!r} is not train, valid or test")

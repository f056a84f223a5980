"""Finding the images and their labels: four folder layouts, detected automatically."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from vistrain.data.images import is_candidate

TRAIN_NAMES = ("train", "training")
VALID_NAMES = ("valid", "val", "validation")
TEST_NAMES = ("test", "testing")


class DataError(ValueError):
    """The data cannot be used as given; the message names the path and what to do."""


@dataclass(frozen=True)
class Entry:
    path: Path
    label: str | None
    split: str | None  # "train", "valid", "test" or None (vistrain splits it)


@dataclass
class Layout:
    kind: str  # "split-folders", "class-folders", "flat", "csv"
    root: Path
    entries: list[Entry]
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        names = {
            "split-folders": "train/valid(/test) folders with one sub-folder per class",
            "class-folders": "one folder per class (vistrain makes the train/valid split)",
            "flat": "one flat folder, labels taken from file names",
            "csv": "a CSV file of path,label",
        }
        return names[self.kind]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_candidate(p))


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _find(root: Path, names: tuple[str, ...]) -> Path | None:
    by_lower = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    for n in names:
        if n in by_lower:
            return by_lower[n]
    return None


def label_from_name(path: Path, pattern: re.Pattern[str]) -> str | None:
    """The first group of ``pattern`` (or the whole match) against the file name without suffix."""
    m = pattern.fullmatch(path.stem) or pattern.match(path.stem)
    if not m:
        return None
    return m.group(1) if m.groups() else m.group(0)


def compile_label_pattern(text: str | None) -> re.Pattern[str] | None:
    if text is None:
        return None
    try:
        return re.compile(text)
    except re.error as exc:
        raise DataError(f"--label-from-name {text!r} is not a valid regular expression: {exc}") from exc


def _flat_entries(folder: Path, split: str | None, pattern: re.Pattern[str] | None, classes: list[str] | None) -> tuple[list[Entry], str]:
    files = _files(folder)
    if pattern is not None:
        entries = [Entry(p, label_from_name(p, pattern), split) for p in files]
        unmatched = [e.path.name for e in entries if e.label is None]
        if unmatched:
            raise DataError(
                f"{folder}: {len(unmatched)} file name(s) do not match --label-from-name "
                f"{pattern.pattern!r}, e.g. {unmatched[0]!r}"
            )
        return entries, f"labels of {folder.name}/ from file names by '{pattern.pattern}'"
    if classes:
        # Names like `outdoor_bouldering_2.jpg`: the longest class name the stem starts with.
        by_length = sorted(classes, key=len, reverse=True)
        entries = []
        for p in files:
            label = next((c for c in by_length if p.stem.startswith(c) and (len(p.stem) == len(c) or not p.stem[len(c)].isalnum())), None)
            if label is None:
                return [], f"{folder.name}/ is flat and its file names do not start with class names: ignored"
            entries.append(Entry(p, label, split))
        return entries, f"labels of {folder.name}/ from file names (each starts with a class name)"
    return [], f"{folder.name}/ is flat and no --label-from-name was given: ignored"


def _class_entries(folder: Path, split: str | None) -> list[Entry]:
    entries = []
    for d in _class_dirs(folder):
        entries.extend(Entry(p, d.name, split) for p in _files(d))
    return entries


def discover(root: Path | str, label_pattern: str | None = None) -> Layout:
    """Detect the layout of ``root`` and list every candidate file with its label and split."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    pattern = compile_label_pattern(label_pattern)
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DataError(f"{root}: expected a folder of images or a CSV file of path,label")
        return _from_csv(root)
    root = root.resolve()

    train, valid = _find(root, TRAIN_NAMES), _find(root, VALID_NAMES)
    if train is not None:
        if valid is None:
            raise DataError(
                f"{root}: has {train.name}/ but no validation folder (one of {', '.join(VALID_NAMES)}); "
                f"add one, or put the class folders directly under {root} to let vistrain split"
            )
        entries = _class_entries(train, "train") + _class_entries(valid, "valid")
        _check_same_classes(train, valid)
        notes = []
        test = _find(root, TEST_NAMES)
        if test is not None:
            if _class_dirs(test):
                entries += _class_entries(test, "test")
            else:
                classes = [d.name for d in _class_dirs(train)]
                test_entries, note = _flat_entries(test, "test", pattern, classes)
                entries += test_entries
                notes.append(note)
        return Layout("split-folders", root, entries, notes)

    if _class_dirs(root):
        entries = _class_entries(root, None)
        stray = _files(root)
        notes = [f"{len(stray)} file(s) directly in {root} (outside class folders) ignored"] if stray else []
        return Layout("class-folders", root, entries, notes)

    if pattern is None:
        raise DataError(
            f"{root}: a flat folder with no class sub-folders; give --label-from-name REGEX "
            f"to read labels from file names (e.g. '(.+)_\\d+' for 'cat_12.jpg')"
        )
    entries, note = _flat_entries(root, None, pattern, None)
    return Layout("flat", root, entries, [note])


def _check_same_classes(train: Path, valid: Path) -> None:
    a = {d.name for d in _class_dirs(train)}
    b = {d.name for d in _class_dirs(valid)}
    if a != b:
        parts = []
        if b - a:
            parts.append(f"only in {valid}: {', '.join(sorted(b - a))}")
        if a - b:
            parts.append(f"only in {train}: {', '.join(sorted(a - b))}")
        raise DataError("train and validation class folders disagree; " + "; ".join(parts))


def _from_csv(path: Path) -> Layout:
    base = path.resolve().parent
    entries = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip().lower() for c in (reader.fieldnames or [])]
        if "path" not in fields or "label" not in fields:
            raise DataError(f"{path}: the CSV needs a header with columns 'path' and 'label' (found {fields})")
        for lineno, row in enumerate(reader, start=2):
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            if not row.get("path") or not row.get("label"):
                raise DataError(f"{path}, line {lineno}: empty path or label")
            p = Path(row["path"])
            p = p if p.is_absolute() else base / p
            split = row.get("split") or None
            if split is not None:
                split = _normalise_split(split, path, lineno)
            entries.append(Entry(p.resolve(), row["label"], split))
    has_split = {e.split is not None for e in entries}
    if len(has_split) > 1:
        raise DataError(f"{path}: the 'split' column must be filled on every row or on none")
    return Layout("csv", base, entries)


def _normalise_split(text: str, path: Path, lineno: int) -> str:
    t = text.lower()
    if t in TRAIN_NAMES:
        return "train"
    if t in VALID_NAMES:
        return "valid"
    if t in TEST_NAMES:
        return "test"
    raise DataError(f"{path}, line {lineno}: split {text!r} is not train, valid or test")

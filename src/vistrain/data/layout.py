"""Finding the images and their labels: four folder layouts, detected automatically."""

from __future__ import annotations

import csv
import os
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


# Folders that hold no one's photos: macOS archive metadata (``._name.jpg`` files, left by unzipping
# elsewhere). Hidden folders (vistrain's own quarantine among them) are skipped too.
IGNORED_DIRS = ("__MACOSX",)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_candidate(p))


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _wanted_dir(p))


def _wanted_dir(d: Path) -> bool:
    return not d.name.startswith(".") and d.name not in IGNORED_DIRS


# Left by ``predict --into DIR`` in DIR: copies sorted by a model, not labelled by a person.
SORTED_MARKER = ".vistrain-sorted"
# The folders ``predict --into`` puts flagged answers in (prediction.flag_folder), by either name.
FLAG_FOLDERS = ("unsure", "unfamiliar", "unsure (vistrain)", "unfamiliar (vistrain)")


def vistrain_output(d: Path) -> str | None:
    """What vistrain wrote in ``d``, if it did: a run (``train --out``: its report copies
    misclassified images) or ``predict --into`` copies. Inside the photos, neither is training data."""
    if (d / "model.safetensors").is_file() and (d / "config.json").is_file():
        return "a vistrain run"
    if (d / SORTED_MARKER).is_file():
        return "copies sorted by vistrain predict --into"
    return None


def label_folder(rel: Path, classes) -> Path | None:
    """The folder that gives the file ``rel`` (relative to the data root) its label, relative too:
    the outermost one named like a class (``train/cats/2019/dogs/b.jpg`` -> ``train/cats``)."""
    for i, part in enumerate(rel.parts[:-1]):
        if part in classes:
            return Path(*rel.parts[: i + 1])
    return None


def tree_files(folder: Path, skipped: list[tuple[Path, str]], given: bool = False) -> list[Path]:
    """Candidate files in ``folder`` and its sub-folders (as torchvision's ImageFolder and fastai
    read class folders: ``cats/2019/x.jpg`` is a cat), in sorted order; symlinked sub-folders are not
    followed (no loops); hidden folders and ``__MACOSX`` are passed over. vistrain's own outputs found
    on the way are left out and added to ``skipped``. ``given``: ``folder`` was named by the user, so it is read
    even when vistrain wrote it (``predict`` over a ``--into`` folder)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        what = None if given and here == folder else vistrain_output(here)
        if what:
            skipped.append((here, what))
            dirnames[:] = []
            continue
        dirnames[:] = sorted(n for n in dirnames if _wanted_dir(here / n))
        found.extend(here / n for n in filenames if is_candidate(here / n))
    return sorted(found)


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


def _class_entries(folder: Path, split: str | None, notes: list[str], root: Path) -> list[Entry]:
    """Every class folder's files, sub-folders included. ``notes`` gets a line saying how many came
    from sub-folders (their label is the class folder's: a user who meant them as classes sees it),
    and one for each thing left out: files directly in ``folder``, vistrain's own outputs, and class
    folders with no files (a class that is not there, rather than silently missing)."""
    entries, skipped = [], []
    stray = _files(folder)
    if stray:
        where = folder if folder == root else f"{folder.relative_to(root)}/"
        notes.append(f"{len(stray)} file(s) directly in {where} (outside class folders) ignored")
    nested: dict[str, int] = {}
    for d in _class_dirs(folder):
        before = len(entries), len(skipped)
        for p in tree_files(d, skipped):
            entries.append(Entry(p, d.name, split))
            if p.parent != d:
                sub = str(p.parent.relative_to(root))
                nested[sub] = nested.get(sub, 0) + 1
        if (len(entries), len(skipped)) == before:
            notes.append(f"{d.relative_to(root)}/ has no files: not a class")
        elif d.name in FLAG_FOLDERS:
            # Versions before the marker left no trace in these: a person should decide.
            notes.append(f"{d.relative_to(root)}/ is taken as a class, but it may be the {d.name.split()[0]!r} folder "
                         f"of `vistrain predict --into` (copies a model answered, not labels): if so, move it out")
    if nested:
        shown = ", ".join(f"{sub}/" for sub in list(nested)[:3]) + (f" and {len(nested) - 3} more" if len(nested) > 3 else "")
        notes.append(f"{sum(nested.values())} file(s) in sub-folders of class folders ({shown}), "
                     f"each labelled by its class folder")
    for d, what in skipped:
        notes.append(f"{d.relative_to(root)}/ ({what}) ignored")
    return entries


def discover(root: Path | str, label_pattern: str | None = None, classes: list[str] | None = None) -> Layout:
    """Detect the layout of ``root`` and list every candidate file with its label and split.

    ``classes`` (known from a trained model) label a flat folder without ``label_pattern`` when
    every file name starts with one of them.
    """
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
        notes: list[str] = []
        entries = _class_entries(train, "train", notes, root) + _class_entries(valid, "valid", notes, root)
        _check_same_classes(train, valid)
        test = _find(root, TEST_NAMES)
        if test is not None:
            if _class_dirs(test):
                entries += _class_entries(test, "test", notes, root)
            else:
                classes = [d.name for d in _class_dirs(train)]
                test_entries, note = _flat_entries(test, "test", pattern, classes)
                entries += test_entries
                notes.append(note)
        return Layout("split-folders", root, entries, notes)

    if _class_dirs(root):
        notes = []
        entries = _class_entries(root, None, notes, root)
        return Layout("class-folders", root, entries, notes)

    if pattern is None:
        if classes:
            entries, note = _flat_entries(root, None, None, classes)
            if entries:
                return Layout("flat", root, entries, [note])
        raise DataError(
            f"{root}: a flat folder with no class sub-folders; give --label-from-name REGEX "
            f"to read labels from file names (e.g. '(.+)_\\d+' for 'cat_12.jpg')"
            + (", or name each file after its class (e.g. 'cat_12.jpg' for class cat)" if classes else "")
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

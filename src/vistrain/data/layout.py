"""Finding the images and their labels: four folder layouts, detected automatically."""

from __future__ import annotations

import os
import re
from pathlib import Path

from PIL import Image

# csv_labels and this module both build on entries (imports go one way); the rest of vistrain
# imports entries' names from here.
from vistrain.data.csv_labels import from_csv
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
from vistrain.data.images import heif_reason, heif_support, is_candidate

# Folders that hold no one's photos: macOS archive metadata (``._name.jpg`` files, left by unzipping
# elsewhere). Hidden folders (vistrain's own quarantine among them) are skipped too.
IGNORED_DIRS = ("__MACOSX",)


def label_as_name(label: str) -> str:
    """``label`` itself, to name a folder or file with; a label :func:`check_label` refuses (a run
    trained before labels were checked) is refused here too, rather than written outside the folder."""
    reason = check_label(label)
    if reason:
        raise DataError(f"class {label!r} {reason}, so it cannot name a folder or file; "
                        f"retrain with that label renamed")
    return label


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_candidate(p))


def _sub_dirs(folder: Path) -> list[Path]:
    """Sub-folders that may hold photos: not hidden, not archive metadata."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and _wanted_dir(p))


def _class_dirs(folder: Path) -> list[Path]:
    # vistrain's own outputs inside the photos are never classes, whatever the layout.
    return [d for d in _sub_dirs(folder) if vistrain_output(d) is None]


def _wanted_dir(d: Path) -> bool:
    return not d.name.startswith(".") and d.name not in IGNORED_DIRS


def _looks_like_image(path: Path) -> bool:
    """Whether Pillow recognises ``path``'s header (no decoding): tells a photo from ``notes.txt``."""
    heif_support()
    try:
        with Image.open(path):
            return True
    except Exception:  # noqa: BLE001 -- any failure to recognise the header means "not an image" here
        return heif_reason(path, None) is not None


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
    wanted = {nfc(c) for c in classes}
    for i, part in enumerate(rel.parts[:-1]):
        if nfc(part) in wanted:
            return Path(*rel.parts[: i + 1])
    return None


def tree_files(folder: Path, skipped: list[tuple[Path, str]], given: bool = False) -> list[Path]:
    """Candidate files in ``folder`` and its sub-folders (as torchvision's ImageFolder and fastai
    read class folders: ``cats/2019/x.jpg`` is a cat), in sorted order; symlinked sub-folders are not
    followed (no loops); hidden folders and ``__MACOSX`` are passed over. vistrain's own outputs found
    on the way are left out and added to ``skipped``. ``given``: ``folder`` was named by the user, so it is read
    even when vistrain wrote it (``predict`` over a ``--into`` folder)."""
    found = []

    def unreadable(exc: OSError) -> None:
        skipped.append((Path(exc.filename), f"cannot read folder: {exc.strerror or exc}"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable):
        here = Path(dirpath)
        what = None if given and here == folder else vistrain_output(here)
        if what:
            skipped.append((here, what))
            dirnames[:] = []
            continue
        dirnames[:] = sorted(n for n in dirnames if _wanted_dir(here / n))
        for n in dirnames:
            if (here / n).is_symlink():  # os.walk does not follow it; say so rather than lose its photos
                skipped.append((here / n, "a link to a folder, not followed"))
        found.extend(here / n for n in filenames if is_candidate(here / n))
    return sorted(found)


def _find_all(root: Path, names: tuple[str, ...]) -> list[Path]:
    """Every folder of ``root`` named (in any case) one of ``names``: more than one is ambiguous."""
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() in names)


def _find_one(root: Path, names: tuple[str, ...], what: str) -> Path | None:
    found = _find_all(root, names)
    if len(found) > 1:
        # Using one silently would train or validate on the wrong photos.
        raise DataError(f"{root}: {len(found)} {what} folders ({', '.join(f'{p.name}/' for p in found)}); "
                        f"keep one, or move the others out of {root}")
    return found[0] if found else None


def label_from_name(path: Path, pattern: re.Pattern[str]) -> str | None:
    """The first group of ``pattern`` (or the whole match) against the file name without suffix, in NFC
    (a pattern typed on a keyboard is composed; names from a Mac or a zip may not be)."""
    stem = nfc(path.stem)
    m = pattern.fullmatch(stem) or pattern.match(stem)
    if not m:
        return None
    return nfc(m.group(1) if m.groups() else m.group(0))


def compile_label_pattern(text: str | None) -> re.Pattern[str] | None:
    if text is None:
        return None
    try:
        return re.compile(text)
    except re.error as exc:
        raise DataError(f"--label-from-name {text!r} is not a valid regular expression: {exc}") from exc


def _regex_label(path: Path, pattern: re.Pattern[str]) -> str | None:
    label = label_from_name(path, pattern)
    reason = None if label is None else check_label(label)
    if reason:
        raise DataError(f"{path}: --label-from-name '{pattern.pattern}' gives the label {label!r}, which {reason}")
    return label


def _regex_entries(folder: Path, split: str | None, pattern: re.Pattern[str]) -> list[Entry]:
    """Files labelled by ``pattern``. A non-image that does not match (``notes.txt``, ``Thumbs.db``) keeps
    no label and is listed by the scan as not an image, as in class folders; a photo that does not match
    is an error, since training without it would silently drop it."""
    entries = [Entry(p, _regex_label(p, pattern), split) for p in _files(folder)]
    unmatched = [e.path.name for e in entries if e.label is None and _looks_like_image(e.path)]
    if unmatched:
        matched = sum(e.label is not None for e in entries)
        raise DataError(
            f"{folder}: {len(unmatched)} image file name(s) do not match --label-from-name "
            f"{pattern.pattern!r} ({matched} matched), e.g. {unmatched[0]!r}"
        )
    return entries


def _prefix_label(stem: str, by_length: list[str]) -> str | None:
    """The longest class name ``stem`` starts with, followed by a non-alphanumeric or nothing; compared in
    NFC, the class returned as given (a model knows its classes in its own spelling)."""
    stem = nfc(stem)
    for c in by_length:
        n = nfc(c)
        if stem.startswith(n) and (len(stem) == len(n) or not stem[len(n)].isalnum()):
            return c
    return None


def _flat_entries(folder: Path, split: str | None, pattern: re.Pattern[str] | None, classes: list[str] | None) -> tuple[list[Entry], str]:
    if pattern is not None:
        return _regex_entries(folder, split, pattern), f"labels of {folder.name}/ from file names by '{pattern.pattern}'"
    if classes:
        # Names like `outdoor_bouldering_2.jpg`: the longest class name the stem starts with.
        by_length = sorted(classes, key=lambda c: len(nfc(c)), reverse=True)
        entries = []
        for p in _files(folder):
            label = _prefix_label(p.stem, by_length)
            if label is None:
                return [], f"{folder.name}/ is flat and its file names do not start with class names: ignored"
            entries.append(Entry(p, label, split))
        return entries, f"labels of {folder.name}/ from file names (each starts with a class name)"
    return [], f"{folder.name}/ is flat and no --label-from-name was given: ignored"


def _folder_label(d: Path) -> str:
    label = nfc(d.name)
    reason = check_label(label)
    if reason:
        raise DataError(f"{d}: the class folder's name {label!r} {reason}; rename the folder")
    return label


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
    for d in _sub_dirs(folder):
        what = vistrain_output(d)
        if what:
            skipped.append((d, what))
            continue
        label = _folder_label(d)
        before = len(entries), len(skipped)
        for p in tree_files(d, skipped):
            entries.append(Entry(p, label, split))
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
        return from_csv(root)
    root = root.resolve()
    if vistrain_output(root) == "a vistrain run":
        raise DataError(f"{root}: a vistrain run (model.safetensors, config.json), not a folder of photos; "
                        f"give the photos' folder")

    files = _files(root)
    # The user said labels are in the file names: sub-folders (thumbnails, an older output) are not classes.
    by_name = pattern is not None and any(_looks_like_image(p) for p in files)
    split = _split_folders(root, pattern, strict=not by_name)
    if split is not None:
        return split
    if by_name:
        return _flat_layout(root, pattern, classes)
    if _class_dirs(root):
        notes: list[str] = []
        entries = _class_entries(root, None, notes, root)
        if entries or not files:
            if pattern is not None:
                notes.append(f"--label-from-name ignored: {root} has no photos of its own, and its class folders "
                             f"give the labels")
            return Layout("class-folders", root, entries, notes)
    if not files:
        raise DataError(f"no images found in {root}")
    return _flat_layout(root, pattern, classes)


def _flat_layout(root: Path, pattern: re.Pattern[str] | None, classes: list[str] | None) -> Layout:
    notes = _ignored_sub_dirs(root)
    if pattern is None:
        entries, note = _flat_entries(root, None, None, classes) if classes else ([], "")
        if entries:
            return Layout("flat", root, entries, [note, *notes])
        raise DataError(
            f"{root}: a flat folder with no class sub-folders; give --label-from-name REGEX "
            f"to read labels from file names (e.g. '(.+)_\\d+' for 'cat_12.jpg')"
            + (", or name each file after its class (e.g. 'cat_12.jpg' for class cat)" if classes else "")
        )
    entries, note = _flat_entries(root, None, pattern, None)
    return Layout("flat", root, entries, [note, *notes])


def _ignored_sub_dirs(root: Path) -> list[str]:
    """Notes for the sub-folders a flat layout does not read, so that a user who meant them as classes sees it."""
    notes, plain = _unread_sub_dirs(root, set())
    if plain:
        notes.insert(0, f"sub-folder(s) {', '.join(plain)} ignored: labels come from the file names in {root}")
    return notes


def _unread_sub_dirs(root: Path, used: set[Path | None]) -> tuple[list[str], list[str]]:
    """Sub-folders of ``root`` outside ``used``: a note for each vistrain output, and the others' names."""
    notes, plain = [], []
    for d in _sub_dirs(root):
        if d in used:
            continue
        what = vistrain_output(d)
        if what:
            notes.append(f"{d.name}/ ({what}) ignored")
        else:
            plain.append(f"{d.name}/")
    return notes, plain


def _split_folders(root: Path, pattern: re.Pattern[str] | None, strict: bool = True) -> Layout | None:
    """The split layout, or None when ``root`` is not one. ``train/`` alone is not enough: a class may be
    called train (vehicles: train, bus, car); it takes class sub-folders and a validation folder.
    ``strict``: an incomplete split layout is an error rather than None (nothing else would read ``root``)."""
    trains = _find_all(root, TRAIN_NAMES)
    if not trains:
        return None
    valid = _find_one(root, VALID_NAMES, "validation")
    if valid is None or not any(_class_dirs(t) for t in trains):
        split_names = set(TRAIN_NAMES + VALID_NAMES + TEST_NAMES)
        if not strict or any(d.name.lower() not in split_names for d in _class_dirs(root)):
            return None  # train/ is one class among others, or a sub-folder of a flat folder
        if valid is None:
            raise DataError(
                f"{root}: has {trains[0].name}/ but no validation folder (one of {', '.join(VALID_NAMES)}); "
                f"add one, or put the class folders directly under {root} to let vistrain split"
            )
        raise DataError(f"{root}: {trains[0].name}/ has no class sub-folders; put each class's photos in "
                        f"{trains[0].name}/<class>/ and {valid.name}/<class>/")
    train = _find_one(root, TRAIN_NAMES, "training")
    notes: list[str] = []
    entries = _class_entries(train, "train", notes, root) + _class_entries(valid, "valid", notes, root)
    _check_same_classes(train, valid)
    test = _find_one(root, TEST_NAMES, "test")
    if test is not None:
        if _class_dirs(test):
            entries += _class_entries(test, "test", notes, root)
        else:
            classes = [nfc(d.name) for d in _class_dirs(train)]
            test_entries, note = _flat_entries(test, "test", pattern, classes)
            entries += test_entries
            notes.append(note)
    notes += _outside_splits(root, {train, valid, test})
    return Layout("split-folders", root, entries, notes)


def _outside_splits(root: Path, used: set[Path | None]) -> list[str]:
    """A note for what the split layout does not read at the top level (``holdout/``, ``notes.txt``):
    photos there are neither trained nor validated on, and a user should know."""
    notes, plain = _unread_sub_dirs(root, used)
    plain += [p.name for p in _files(root)]
    if plain:
        shown = ", ".join(plain[:5]) + (f" and {len(plain) - 5} more" if len(plain) > 5 else "")
        notes.insert(0, f"{shown} in {root} (outside train/valid/test) ignored")
    return notes


def _check_same_classes(train: Path, valid: Path) -> None:
    a = {nfc(d.name) for d in _class_dirs(train)}
    b = {nfc(d.name) for d in _class_dirs(valid)}
    if a != b:
        parts = []
        if b - a:
            parts.append(f"only in {valid}: {', '.join(sorted(b - a))}")
        if a - b:
            parts.append(f"only in {train}: {', '.join(sorted(a - b))}")
        raise DataError("train and validation class folders disagree; " + "; ".join(parts))

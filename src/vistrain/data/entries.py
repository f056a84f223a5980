"""What every layout reader builds on: entries and layouts, the split folders' names, the data error
and the label checks.

:mod:`.layout` reads folders and hands a CSV file to :mod:`.csv_labels`; what both need lives
here, below either, so imports go one way (layout -> csv_labels -> entries, layout -> entries) and
neither has to import the other late. :mod:`.layout` still offers these names to its importers.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

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


def nfc(text: str) -> str:
    """``text`` in Unicode NFC. macOS and many zip tools write names decomposed (NFD: "e" + a combining
    accent), most other sources composed: without this, one class "café" would be two, or unknown to a model."""
    return unicodedata.normalize("NFC", text)


def check_label(label: str) -> str | None:
    """Why ``label`` cannot be a class name, or None. Labels become folder names (``predict --into
    DIR/<label>/``, the report's ``errors/<actual>/<predicted>/``), so a label must be one safe folder name."""
    if not label:
        return "is empty"
    if label in (".", ".."):
        return "is '.' or '..', a path rather than a name"
    if "/" in label or "\\" in label:
        return "contains a path separator ('/' or '\\')"
    if any(unicodedata.category(ch) == "Cc" for ch in label):
        return "contains a control character"
    if label.startswith("."):
        return "starts with '.': it would be a hidden folder, which vistrain's own scans skip"
    return None

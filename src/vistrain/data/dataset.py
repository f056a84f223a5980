"""The dataset index: a folder (or CSV) turned into checked, labelled, split records."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vistrain.data.images import DEFAULT_MAX_PIXELS
from vistrain.data.layout import DataError, Layout, discover, label_folder
from vistrain.data.scan import Record, scan
from vistrain.data.split import check_valid_fraction, stratified_split
from vistrain.progress import Reporter, SilentReporter


def default_cache_dir() -> Path:
    """``$VISTRAIN_CACHE_DIR``, else ``$XDG_CACHE_HOME/vistrain``, else ``~/.cache/vistrain``."""
    env = os.environ.get("VISTRAIN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vistrain"


def resolve_cache_dir(cache_dir: Path | str | bool | None) -> Path | None:
    """What ``--cache-dir`` / ``--no-cache`` ask for: False (no cache) -> None; None or True -> the default."""
    if cache_dir is False:
        return None
    if cache_dir is None or cache_dir is True:
        return default_cache_dir()
    return Path(cache_dir)


@dataclass
class DataConfig:
    """How to read a dataset. The fraction is checked here, before any photo is scanned; the folder
    and the labels when an index is built."""

    root: Path
    label_from_name: str | None = None
    valid_fraction: float = 0.2
    seed: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    cache_dir: Path | None = None  # None: no scan cache

    def __post_init__(self) -> None:
        check_valid_fraction(self.valid_fraction)


@dataclass
class DatasetIndex:
    layout: Layout
    records: list[Record]  # usable files
    skipped: list[Record]  # files that could not be used, with the reason
    classes: list[str]
    from_cache: int = 0
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Record]:
        return [r for r in self.records if r.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class."""
        out: dict[str, dict[str, int]] = {}
        for s in ("train", "valid", "test"):
            c = Counter(r.label for r in self.split(s))
            if c:
                out[s] = {k: c.get(k, 0) for k in self.classes}
        return out

    def report(self) -> dict:
        return {
            "root": str(self.layout.root),
            "layout": self.layout.kind,
            "layout_description": self.layout.describe(),
            "classes": self.classes,
            "counts": self.counts(),
            "n_usable": len(self.records),
            "n_skipped": len(self.skipped),
            "skipped": [{"path": r.path, "label": r.label, "reason": r.reason} for r in self.skipped],
            "notes": self.layout.notes + self.notes,
        }


def scan_entries(cfg: DataConfig, layout: Layout, reporter: Reporter | None):
    cache_file = cfg.cache_dir / "scan.json" if cfg.cache_dir else None
    with (reporter or SilentReporter()).stage("scan", len(layout.entries), unit="file") as advance:
        records, hits = scan(layout.entries, cache_file, cfg.max_pixels, advance)
    ok = [r for r in records if r.ok]
    bad = [r for r in records if not r.ok]
    return ok, bad, hits


def unusable_classes(layout: Layout, ok: list[Record], bad: list[Record]) -> list[str]:
    """Notes for the labels (per split) whose files were all skipped: a class folder holding only
    ``Thumbs.db`` and a broken photo would otherwise vanish from the classes without a word."""
    usable = {(r.split, r.label) for r in ok}
    lost = Counter((r.split, r.label) for r in bad if r.label is not None and (r.split, r.label) not in usable)
    return [f"{_where(layout, r_split, label)} has no usable image ({n} skipped): not a class"
            for (r_split, label), n in sorted(lost.items(), key=lambda kv: (str(kv[0][0]), kv[0][1]))]


def _where(layout: Layout, split: str | None, label: str) -> str:
    """The class's folder relative to the root, or the label itself where no folder gives it (CSV, flat)."""
    if layout.kind in ("class-folders", "split-folders"):
        for e in layout.entries:
            if e.label == label and e.split == split:
                rel = e.path.relative_to(layout.root)
                # Past the split folder, so that a class named train is found in train/train/.
                top = Path(*rel.parts[:1]) if layout.kind == "split-folders" else Path()
                folder = label_folder(rel.relative_to(top), {label})
                if folder is not None:
                    return f"{top / folder}/"
    return f"class {label!r}" + (f" ({split})" if split else "")


def build_index(
    cfg: DataConfig,
    reporter: Reporter | None = None,
    require_train: bool = True,
) -> DatasetIndex:
    """Discover, scan and check a training dataset, and split it when it is not pre-split."""
    layout = discover(cfg.root, cfg.label_from_name)
    if not layout.entries:
        raise DataError(f"{layout.root}: no files found")
    ok, bad, hits = scan_entries(cfg, layout, reporter)
    try:
        classes = _check_training_data(cfg, layout, ok, bad, require_train)
    except DataError as exc:
        # The skipped files are listed only once the index exists: an error about what is left must
        # say what was taken away (a CSV's paths that do not exist, a class's corrupt photos).
        raise DataError(f"{exc}{skipped_said(bad)}") from exc
    return DatasetIndex(layout, ok, bad, classes, from_cache=hits)


def skipped_said(bad: list[Record]) -> str:
    """`` (3 file(s) skipped: 2 x truncated file...; e.g. PATH)``, or nothing when none was."""
    if not bad:
        return ""
    reasons = Counter(r.reason for r in bad).most_common()
    said = "; ".join(f"{n} x {reason}" for reason, n in reasons[:3]) + ("; ..." if len(reasons) > 3 else "")
    return f" ({len(bad)} file(s) skipped: {said}; e.g. {bad[0].path})"


def _check_training_data(cfg: DataConfig, layout: Layout, ok: list[Record], bad: list[Record],
                         require_train: bool) -> list[str]:
    """The classes, once the scanned files are known to make a training set (split here if needed)."""
    if not ok:
        raise DataError(f"{layout.root}: none of the {len(layout.entries)} file(s) is a usable image")
    # On the layout's notes, which are printed and kept in data_report.json.
    layout.notes += unusable_classes(layout, ok, bad)
    classes = sorted({r.label for r in ok if r.split != "test"})
    if require_train:
        if len(classes) < 2:
            only = f" (only {classes[0]!r})" if classes else ""
            raise DataError(f"{layout.root}: a classifier needs at least 2 classes{only}")
        test_only = sorted({r.label for r in ok if r.split == "test"} - set(classes))
        if test_only:
            raise DataError(f"{layout.root}: test labels not among the training classes: {', '.join(test_only)}")
        if any(r.split is None for r in ok):
            stratified_split(ok, cfg.valid_fraction, cfg.seed)
        for name in ("train", "valid"):
            empty = [c for c in classes if not any(r.label == c and r.split == name for r in ok)]
            if empty:
                raise DataError(f"{layout.root}: no usable {name} images for class(es) {', '.join(empty)}")
    return classes


def build_eval_index(cfg: DataConfig, reporter: Reporter | None = None, classes: list[str] | None = None
                     ) -> DatasetIndex:
    """Index a labelled folder to evaluate on: every usable file counts, whatever its split.

    ``classes``: the model's; a flat folder whose file names start with them is labelled from the
    names without a regex, as a flat ``test/`` beside ``train/`` is in training.
    """
    layout = discover(cfg.root, cfg.label_from_name, classes)
    if not layout.entries:
        raise DataError(f"{layout.root}: no files found")
    if layout.kind == "split-folders":
        # Evaluate on the held-out part: test if it has labels, else valid.
        splits = {e.split for e in layout.entries}
        keep = "test" if "test" in splits else "valid"
        layout.entries = [e for e in layout.entries if e.split == keep]
        layout.notes.append(f"evaluating on the {keep} images of {layout.root}")
    ok, bad, hits = scan_entries(cfg, layout, reporter)
    if not ok:
        raise DataError(f"{layout.root}: none of the {len(layout.entries)} file(s) is a usable image{skipped_said(bad)}")
    layout.notes += unusable_classes(layout, ok, bad)
    classes = sorted({r.label for r in ok})
    return DatasetIndex(layout, ok, bad, classes, from_cache=hits)

"""``vistrain audit``: duplicates, conflicts, leaks, unreadable files, shortcuts, label errors, outliers.

The hash-level part (:func:`hash_findings`) needs only the scan records, so ``train`` runs it on
every dataset for free; the feature-level part reuses the frozen-feature cache that training fills.
Every finding names its files, relative to the data folder.
"""

from __future__ import annotations

import json
import os
import types
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vistrain.clean.keep import keep_order
from vistrain.data.dataset import DataConfig, scan_entries
from vistrain.data.layout import discover
from vistrain.data.phash import (
    NEAR_BITS,
    duplicate_groups,
    duplicate_links,
    tight_groups,
)
from vistrain.data.scan import Record
from vistrain.progress import Reporter, SilentReporter

AUDIT_VERSION = 1
# Measured on clothing and climbing (README "Clean your data"): Lite0 features of the same photo
# re-encoded scored 0.998; the closest different photos (two pairs of jeans on one hanger) 0.944.
NEAR_COSINE = 0.96
SEVERITY = {"conflict": "error", "leak": "error", "exact_duplicate": "warning", "near_duplicate": "warning",
            "unreadable": "warning", "shortcut": "warning", "label_error": "warning", "outlier": "info"}


# The start of data.images' reason for a file Pillow does not recognise at all (notes.txt, Thumbs.db).
NOT_AN_IMAGE = "not an image"
# A count of skipped files that are no image at all, apart from "unreadable" (damaged or unopenable
# photos): "2 unreadable files" read as two broken photos. A key of counts, not a kind of finding.
NON_IMAGE = "non_image"


@dataclass
class Finding:
    kind: str
    message: str
    files: list[str]
    labels: list[str] | None = None
    score: float | None = None
    severity: str = ""

    def __post_init__(self) -> None:
        self.severity = self.severity or SEVERITY[self.kind]

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class AuditConfig:
    data: DataConfig
    features: bool = True  # False: hash-level findings only (no backbone, seconds)
    backbone: str = "efficientnet_lite0"
    image_size: int | None = None  # None: the size ``train`` would choose (so the feature cache is shared)
    near_bits: int = NEAR_BITS
    near_cosine: float = NEAR_COSINE
    folds: int = 5
    outlier_z: float = 4.0
    max_label_errors: int = 200
    seed: int = 0


@dataclass
class AuditResult:
    data: Path
    findings: list[Finding]
    # path (relative) -> {"label", "predicted", "probability", "self_confidence"}: for the review page.
    predictions: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.findings))

    def counts(self) -> dict[str, int]:
        """:meth:`summary` with the skipped files that are not images counted apart (``NON_IMAGE``)."""
        return counts_apart((f.kind, f.message) for f in self.findings)

    def to_dict(self) -> dict:
        return {"version": AUDIT_VERSION, "data": str(self.data), "summary": self.summary(),
                "findings": [f.to_dict() for f in self.findings], "notes": self.notes}

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def counts_apart(findings) -> dict[str, int]:
    """Findings counted by kind from ``(kind, message)`` pairs, those of an ``unreadable`` file that
    is not an image at all (its message says so: ``skipped: not an image ...``) as ``NON_IMAGE``."""
    return dict(Counter(NON_IMAGE if kind == "unreadable" and message.startswith(f"skipped: {NOT_AN_IMAGE}")
                        else kind for kind, message in findings))


def _rel(root: Path, path: str) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None  # gone since the scan: the keep rule then prefers another copy


def duplicate_clusters(records: list[Record], near_bits: int = NEAR_BITS,
                       extra_pairs: list[tuple[int, int, float]] = ()) -> list[list[int]]:
    """Record indices grouped by same bytes, perceptual hash within ``near_bits``, or ``extra_pairs``."""
    return duplicate_groups([r.sha1 for r in records], [r.phash for r in records], near_bits, extra_pairs,
                            [r.colour for r in records])


def hash_findings(root: Path, records: list[Record], skipped: list[Record], near_bits: int = NEAR_BITS,
                  extra_pairs: list[tuple[int, int, float]] = ()) -> list[Finding]:
    """Duplicates (bytes, perceptual hash, plus ``extra_pairs`` of record indices), conflicts,
    leaks, unreadable files and shortcuts. Each group's photos are all alike to one of them
    (:func:`tight_groups`): a chain of look-alikes is not "the same photo"."""
    sha1s = [r.sha1 for r in records]
    links = duplicate_links(sha1s, [r.phash for r in records], near_bits, extra_pairs, [r.colour for r in records])
    groups = tight_groups(sha1s, links)
    out: list[Finding] = []
    for group in sorted(groups, key=lambda g: -len(g)):
        members = [records[i] for i in group]
        files = [_rel(root, r.path) for r in members]
        # The file to keep comes first (the review page offers the others); the message says why.
        order, why = keep_order(files, [_mtime(r.path) for r in members], [r.split for r in members])
        members, files = [members[i] for i in order], [files[i] for i in order]
        exact = len({r.sha1 for r in members}) == 1
        kind = "exact_duplicate" if exact else "near_duplicate"
        out.append(Finding(kind, f"{len(files)} {'byte-identical copies' if exact else 'near-identical photos'}"
                           f"; keep {files[0]} ({why})", files, sorted({r.label for r in members if r.label})))
        labels = sorted({r.label for r in members if r.label})
        if len(labels) > 1:
            out.append(Finding("conflict", f"the same photo is labelled {' and '.join(labels)}: at most one is right",
                               files, labels))
        splits = sorted({r.split for r in members if r.split})
        if len(splits) > 1:
            out.append(Finding("leak", f"copies in {' and '.join(splits)}: the model is scored on a photo it trained "
                               f"on, so {'/'.join(s for s in splits if s != 'train')} accuracy is inflated",
                               files, labels))
    for r in skipped:
        out.append(Finding("unreadable", f"skipped: {r.reason}", [_rel(root, r.path)],
                           [r.label] if r.label else None))
    out += shortcut_findings(root, records)
    return out


def shortcut_findings(root: Path, records: list[Record], purity: float = 0.95, coverage: float = 0.3,
                      min_files: int = 5) -> list[Finding]:
    """A label that a file property alone predicts: at least ``purity`` of the files with that property
    carry the label, and they are at least ``coverage`` of the class, while other classes differ."""
    labelled = [r for r in records if r.label]
    per_class = Counter(r.label for r in labelled)
    if len(per_class) < 2:
        return []
    out = []
    props = {"file format": lambda r: r.format, "image size": lambda r: f"{r.width}x{r.height}",
             "colour mode": lambda r: r.mode}
    for prop, get in props.items():
        values = Counter(get(r) for r in labelled)
        if len(values) < 2:
            continue  # everything alike: nothing to learn from it
        for value, n in values.items():
            with_value = [r for r in labelled if get(r) == value]
            label, n_top = Counter(r.label for r in with_value).most_common(1)[0]
            if n_top >= min_files and n_top / n >= purity and n_top / per_class[label] >= coverage \
                    and n < len(labelled) * 0.9:
                out.append(Finding(
                    "shortcut",
                    f"{n_top} of the {n} files with {prop} {value} are {label!r} ({n_top / per_class[label]:.0%} of "
                    f"that class): a model can learn the {prop} instead of the content",
                    [_rel(root, r.path) for r in with_value], [label], round(n_top / n, 3)))
    return out


def audit(cfg: AuditConfig, reporter: Reporter | None = None) -> AuditResult:
    """Scan ``cfg.data.root`` and return every finding; computes (or reads cached) features unless
    ``cfg.features`` is False."""
    ui = reporter or SilentReporter()
    layout = discover(cfg.data.root, cfg.data.label_from_name)
    records, skipped, _ = scan_entries(cfg.data, layout, ui)
    root = layout.root
    notes = list(layout.notes)
    predictions: dict[str, dict] = {}
    extra_pairs: list[tuple[int, int, float]] = []
    model_findings: list[Finding] = []
    if cfg.features and len(records) >= 2:
        from vistrain.clean.label_errors import (
            find_label_issues,
            knn_distances,
            out_of_fold_probabilities,
            robust_outliers,
            similar_pairs,
        )

        feats = _features(cfg, records, ui)
        unit = feats / (np.linalg.norm(feats, axis=1, keepdims=True) + 1e-12)
        extra_pairs = similar_pairs(unit, cfg.near_cosine)
        dist = knn_distances(unit)
        for i in robust_outliers(dist, cfg.outlier_z):
            r = records[i]
            model_findings.append(Finding("outlier", f"far from every other photo (mean cosine distance "
                                          f"{dist[i]:.2f} to its 5 nearest): another subject, a placeholder, or junk",
                                          [_rel(root, r.path)], [r.label] if r.label else None, round(float(dist[i]), 4)))
        labelled = [i for i, r in enumerate(records) if r.label]
        classes = sorted({records[i].label for i in labelled})
        y = np.array([classes.index(records[i].label) for i in labelled])
        if len(classes) >= 2 and np.bincount(y).min() >= 2:
            group_of = _fold_groups(records, duplicate_clusters(records, cfg.near_bits, extra_pairs), cfg.folds)
            with ui.stage("label check", cfg.folds, unit="fold") as advance:
                probs = out_of_fold_probabilities(feats[labelled], y, len(classes), cfg.folds, cfg.seed,
                                                  groups=group_of[labelled])
                advance(cfg.folds)
            found = find_label_issues(y, probs)
            for n, i in enumerate(labelled):
                predictions[_rel(root, records[i].path)] = {
                    "label": records[i].label, "predicted": classes[int(found.predicted[n])],
                    "probability": round(float(probs[n].max()), 4),
                    "self_confidence": round(float(found.self_confidence[n]), 4)}
            for n in found.issues[: cfg.max_label_errors]:
                r, pred = records[labelled[n]], classes[int(found.predicted[n])]
                model_findings.append(Finding(
                    "label_error", f"labelled {r.label!r}, but the out-of-fold model says {pred!r} "
                    f"({probs[n].max():.0%}; {found.self_confidence[n]:.0%} for {r.label!r})",
                    [_rel(root, r.path)], [r.label, pred], round(1.0 - float(found.self_confidence[n]), 4)))
            if len(found.issues) > cfg.max_label_errors:
                notes.append(f"{len(found.issues)} likely label errors; the {cfg.max_label_errors} most likely are listed")
        else:
            notes.append("label check skipped: it needs 2 or more classes with 2 or more images each")
    findings = hash_findings(root, records, skipped, cfg.near_bits, extra_pairs) + model_findings
    classes = sorted({r.label for r in records if r.label})
    return AuditResult(root.resolve(), findings, predictions, notes, classes)


def _fold_groups(records: list[Record], groups: list[list[int]], folds: int) -> np.ndarray:
    """A group id per record for the k-fold split: copies share one, so no copy is scored by a model
    that trained on its twin; a cluster larger than a fold's share of its class is split up instead
    (chained near-duplicates can swallow a class, which would then be missing from the training folds)."""
    per_class = Counter(r.label for r in records)
    out = np.arange(len(records)) + len(records)
    for g, members in enumerate(groups):
        if len(members) > 1 and len(members) <= min(per_class[records[i].label] for i in members) / folds:
            out[members] = g
    return out


def _features(cfg: AuditConfig, records: list[Record], ui: Reporter) -> np.ndarray:
    from vistrain.models.registry import create_backbone, get_backbone
    from vistrain.training.features import backbone_features, feature_caches
    from vistrain.training.trainer import choose_image_size

    spec = get_backbone(cfg.backbone)
    # The size ``train`` picks for these photos, so that either command fills the cache for the other.
    pool = [r for r in records if r.split in ("train", None)] or records
    size = cfg.image_size or choose_image_size(types.SimpleNamespace(split=lambda _: pool), cfg.backbone)
    prep = spec.preprocessing(size, "crop")
    return backbone_features(ui, create_backbone(cfg.backbone).eval(), records, prep,
                             feature_caches(cfg.data.cache_dir, cfg.backbone, prep))


def quick_audit(index) -> AuditResult:
    """The hash-level audit of an already scanned :class:`DatasetIndex` (no decoding, no model): what
    ``train`` prints and keeps as ``RUN/audit.json``."""
    root = index.layout.root
    classes = list(index.classes)
    return AuditResult(root.resolve(), hash_findings(root, index.records, index.skipped), notes=[], classes=classes)

"""Scoring a model on a labelled folder: what ``evaluate`` does with a run (PyTorch) and with an
export (ONNX Runtime) alike, around each model's own predictions. Torch-free."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from vistrain.data.dataset import (
    DataConfig,
    DatasetIndex,
    build_eval_index,
    resolve_cache_dir,
)
from vistrain.data.layout import nfc
from vistrain.data.scan import Record
from vistrain.evaluation.metrics import classification_metrics
from vistrain.evaluation.seen import Look, overlap_with_run
from vistrain.familiarity import Familiarity, unfamiliar_summary
from vistrain.progress import Reporter


@dataclass
class LabelledIndex(DatasetIndex):
    """A :class:`DatasetIndex` whose ``records`` are the images with a label the model knows;
    ``unknown``: the others (a class folder the model never saw), set apart rather than scored."""

    unknown: list[Record] = field(default_factory=list)


def class_positions(classes: list[str]) -> dict[str, int]:
    """Each model class's index, keyed by its name in NFC: data labels are NFC (``layout.nfc``), and a
    run trained before they were may spell its classes decomposed (NFD, as macOS names folders).
    A name that two classes share in NFC (:func:`nfc_twins`) is left out: either would be a guess."""
    twins = nfc_twins(classes)
    return {nfc(c): i for i, c in enumerate(classes) if nfc(c) not in twins}


def nfc_twins(classes: list[str]) -> dict[str, list[str]]:
    """The model's classes that differ only in Unicode normalisation, by the NFC name they share. A run
    trained before labels were normalised, on a filesystem that keeps both spellings of a folder apart
    (Linux does), has two classes where vistrain now reads one."""
    spellings: dict[str, list[str]] = {}
    for c in classes:
        spellings.setdefault(nfc(c), []).append(c)
    return {name: found for name, found in spellings.items() if len(found) > 1}


def twins_message(where: str | Path, label: str, twins: list[str]) -> str:
    """The refusal of images labelled ``label``, which could be any of ``twins`` (shown by code point:
    printed, the spellings look the same)."""
    return (f"{where}: images labelled {label!r} could be any of the model's classes "
            f"{' and '.join(ascii(c) for c in twins)}, which differ only in Unicode normalisation; labels "
            f"are read in NFC, so either spelling of a folder gives the same label, and scoring it would merge "
            f"the classes: leave those images out, or retrain (vistrain now reads both spellings as one class)")


def known_and_unknown(labels: list[str], classes: list[str], where: str | Path, verbatim: bool = False
                      ) -> tuple[list[int], list[int], np.ndarray]:
    """Positions in ``labels`` of those the model knows and of the others, and the class indices
    of the known ones.

    Classes that differ only in Unicode normalisation (:func:`nfc_twins`) are matched exactly when the
    labels are ``verbatim``, spelt as the model spells its classes (the run's own ``split.csv``). Data
    labels are NFC, so a folder of either spelling gives the NFC one: a label of such a name is refused
    (ValueError naming ``where``), never scored against one of them, which would silently merge the two."""
    positions, twins = class_positions(classes), nfc_twins(classes)
    exact = {c: i for i, c in enumerate(classes)}

    def position(label: str) -> int | None:
        name = nfc(label)
        if name not in twins:
            return positions.get(name)
        if verbatim and label in exact:
            return exact[label]
        raise ValueError(twins_message(where, label, twins[name]))

    found = [position(label) for label in labels]
    known = [i for i, k in enumerate(found) if k is not None]
    return known, [i for i, k in enumerate(found) if k is None], np.array([found[i] for i in known], dtype=int)


def no_known_label(data: str | Path, labels: list[str], classes: list[str]) -> str:
    """The message for a folder none of whose images has a label the model knows."""
    found = ", ".join(f"{label} ({n} image{'s' if n != 1 else ''})" for label, n in sorted(Counter(labels).items()))
    return f"{data}: no image has a label the model knows; found {found} (model classes: {', '.join(classes)})"


def labelled_index(data: str | Path, label_from_name: str | None, cache_dir: Path | str | bool | None,
                   classes: list[str], ui: Reporter) -> tuple[LabelledIndex, np.ndarray]:
    """The labelled images of ``data`` that the model can be scored on, and their class indices.
    Images of a label the model lacks are set apart in ``unknown`` (a user scoring on a new folder
    with one extra class still wants the others scored); an error only when every image has one."""
    index = build_eval_index(DataConfig(Path(data), label_from_name, cache_dir=resolve_cache_dir(cache_dir)),
                             reporter=ui, classes=classes)
    known, unknown, y_true = known_and_unknown([r.label for r in index.records], classes, data)
    if not known:
        raise ValueError(no_known_label(data, [r.label for r in index.records], classes))
    same = {f.name: getattr(index, f.name) for f in fields(DatasetIndex)}
    labelled = LabelledIndex(**{**same, "records": [index.records[i] for i in known]},
                             unknown=[index.records[i] for i in unknown])
    return labelled, y_true


def predict_paths(outputs_from_paths: Callable, scored: list[str], unknown: list[str], ui: Reporter, tta: bool
                  ) -> tuple[np.ndarray, np.ndarray | None, list[str | None], list[int | None]]:
    """The logits (``N x views x K``), similarities and errors (None where it was read) of the
    ``scored`` images, and the class predicted for each of the ``unknown``-label ones (None where it
    failed), from a predictor's ``outputs_from_paths``.

    The unknown-label images ride along after the scored ones: what the model calls a class it never
    saw is worth a line, though it scores nothing."""
    n = len(scored)
    with ui.stage("predict", n + len(unknown)) as advance:
        views, similarity, errors = outputs_from_paths(scored + unknown, advance, views=2 if tta else 1)
    unknown_pred = [None if why else int(np.argmax(v.mean(axis=0))) for v, why in zip(views[n:], errors[n:])]
    return views[:n], None if similarity is None else similarity[:n], errors[:n], unknown_pred


def predict_labelled(outputs_from_paths: Callable, index: LabelledIndex, ui: Reporter, tta: bool
                     ) -> tuple[np.ndarray, np.ndarray | None, list[int | None]]:
    """:func:`predict_paths` of a scanned folder's images (``evaluate`` of a run or an export, and
    ``report`` on a folder): the scored images' logits and similarities, and the unknown-label
    images' predicted classes.

    A scored image that fails here is an error naming it, not a silent class 0 nor a silent gap: the
    scan decoded every one (those it could not are skipped and listed before this), so only a file
    changed or broken since can fail, and the metrics would be of other images than the ones listed."""
    paths = [r.path for r in index.records]
    views, similarity, errors, unknown_pred = predict_paths(outputs_from_paths, paths,
                                                            [r.path for r in index.unknown], ui, tta)
    failed = [(p, why) for p, why in zip(paths, errors) if why]
    if failed:
        path, why = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise ValueError(f"{path}: {why}{more}; it changed since it was scanned")
    return views, similarity, unknown_pred


def unknown_labels(labels: list[str], predicted: list[int | None] | None, classes: list[str]) -> dict:
    """``{"unknown_labels": {label: images}}`` for images whose label the model does not know, and
    with their predictions (class indices, None where a file failed) ``"unknown_predicted":
    {label: {class: images}}``, most predicted first: what the model makes of a class it never saw."""
    out: dict = {"unknown_labels": dict(sorted(Counter(labels).items()))}
    if predicted is not None and labels:
        by_label: dict[str, Counter] = {label: Counter() for label in out["unknown_labels"]}
        for label, k in zip(labels, predicted):
            if k is not None:
                by_label[label][classes[k]] += 1
        out["unknown_predicted"] = {label: dict(c.most_common()) for label, c in by_label.items()}
    return out


def describe_unknown(metrics: dict, most: int = 3) -> str:
    """One line on the images left unscored for their unknown label, or "" when there are none:
    ``not scored, 9 images with a label the model does not know: dog (7 images: predicted cat 5, bird 2)``."""
    counts = metrics.get("unknown_labels") or {}
    if not counts:
        return ""
    predicted = metrics.get("unknown_predicted") or {}
    parts = []
    for label, n in counts.items():
        said = f"{n} image{'s' if n != 1 else ''}"
        ranked = list(predicted.get(label, {}).items())
        if ranked:
            shown = ", ".join(f"{c} {k}" for c, k in ranked[:most])
            rest = sum(k for _, k in ranked[most:])
            said += f": predicted {shown}" + (f", others {rest}" if rest else "")
        parts.append(f"{label} ({said})")
    total = sum(counts.values())
    return (f"not scored, {total} image{'s' if total != 1 else ''} with a label the model does not know: "
            + "; ".join(parts))


def labelled_metrics(index: DatasetIndex, classes: list[str], y_true: np.ndarray, y_pred: np.ndarray,
                     familiarity: Familiarity | None, similarity: np.ndarray | None,
                     run_dir: Path | None, run_extra: dict, unknown_pred: list[int | None] | None = None) -> dict:
    """``evaluate``'s metrics: per class, the unfamiliar images apart, the skipped files, the images
    the run (``run_dir``, its ``split.csv``) trained or validated on, and the images of labels the
    model does not know (``index.unknown``; with ``unknown_pred``, their predictions, in that order)."""
    metrics = classification_metrics(y_true, y_pred, classes)
    if familiarity is not None and similarity is not None:
        metrics["unfamiliar"] = unfamiliar_summary(familiarity, similarity, y_true, y_pred)
    metrics["skipped"] = [{"path": r.path, "reason": r.reason} for r in index.skipped]
    metrics["notes"] = list(index.layout.notes)
    metrics.update(unknown_labels([r.label for r in getattr(index, "unknown", [])], unknown_pred, classes))
    if run_dir is not None:
        overlap = overlap_with_run(run_dir, run_extra, [r.path for r in index.records], y_true, y_pred,
                                   [Look(r.sha1, r.phash, r.colour) for r in index.records])
        if overlap:
            metrics["overlap_with_run"] = overlap
    return metrics


def tta_gain(views: np.ndarray, y_true: np.ndarray) -> dict:
    """``evaluate --tta``'s ``tta``: accuracy of view 0 alone and of the views' mean logits
    (``views``: ``N x views x K``), and the gain."""
    plain = float((views[:, 0].argmax(axis=1) == y_true).mean())
    both = float((views.mean(axis=1).argmax(axis=1) == y_true).mean())
    return {"accuracy_plain": plain, "accuracy_tta": both, "gain": both - plain}

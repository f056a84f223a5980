"""Scoring a model on a labelled folder: what ``evaluate`` does with a run (PyTorch) and with an
export (ONNX Runtime) alike, around each model's own predictions. Torch-free."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vistrain.data.dataset import (
    DataConfig,
    DatasetIndex,
    build_eval_index,
    resolve_cache_dir,
)
from vistrain.evaluation.metrics import classification_metrics
from vistrain.evaluation.seen import Look, overlap_with_run
from vistrain.familiarity import Familiarity, unfamiliar_summary
from vistrain.progress import Reporter


def labelled_index(data: str | Path, label_from_name: str | None, cache_dir: Path | str | bool | None,
                   classes: list[str], ui: Reporter) -> tuple[DatasetIndex, np.ndarray]:
    """The labelled images of ``data`` and their class indices; a label the model lacks is an error."""
    index = build_eval_index(DataConfig(Path(data), label_from_name, cache_dir=resolve_cache_dir(cache_dir)),
                             reporter=ui, classes=classes)
    unknown = sorted({r.label for r in index.records} - set(classes))
    if unknown:
        raise ValueError(f"{data}: label(s) the model does not know: {', '.join(unknown)} "
                         f"(model classes: {', '.join(classes)})")
    return index, np.array([classes.index(r.label) for r in index.records])


def labelled_metrics(index: DatasetIndex, classes: list[str], y_true: np.ndarray, y_pred: np.ndarray,
                     familiarity: Familiarity | None, similarity: np.ndarray | None,
                     run_dir: Path | None, run_extra: dict) -> dict:
    """``evaluate``'s metrics: per class, the unfamiliar images apart, the skipped files, and the
    images the run (``run_dir``, its ``split.csv``) trained or validated on."""
    metrics = classification_metrics(y_true, y_pred, classes)
    if familiarity is not None and similarity is not None:
        metrics["unfamiliar"] = unfamiliar_summary(familiarity, similarity, y_true, y_pred)
    metrics["skipped"] = [{"path": r.path, "reason": r.reason} for r in index.skipped]
    metrics["notes"] = list(index.layout.notes)
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

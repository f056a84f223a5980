"""``vistrain predict`` and ``vistrain evaluate`` on an export folder: the shipped ONNX model, run by
ONNX Runtime without PyTorch, with the same rows, CSV, ``--into`` folders and metrics as a run folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vistrain.evaluation.labelled import (
    labelled_index,
    labelled_metrics,
    predict_labelled,
    tta_gain,
)
from vistrain.heatmap import save_heatmap
from vistrain.prediction import (
    check_answer_options,
    classify_files,
    sort_into,
    write_predictions_csv,
)
from vistrain.progress import Reporter, SilentReporter
from vistrain.runtime.predictor import OnnxPredictor


def is_export_folder(folder: Path | str) -> bool:
    """An export (``export.json``) rather than a run (``config.json``, read by PyTorch)."""
    folder = Path(folder)
    return (folder / "export.json").is_file() and not (folder / "config.json").is_file()


def export_to_use(folder: Path | str) -> Path | None:
    """The export folder to run instead of a run's PyTorch model: ``folder`` itself when it is an
    export; the run's ``export/`` when PyTorch is not installed (a serving install); else None."""
    folder = Path(folder)
    if is_export_folder(folder):
        return folder
    try:
        import torch  # noqa: F401 -- only whether it can be imported
    except ImportError:
        return folder / "export" if is_export_folder(folder / "export") else None
    return None


def predict_export(folder: Path | str, inputs: list[str | Path], top_k: int = 3, unsure: float | None = None,
                   csv_path: Path | None = None, into: Path | None = None, reporter: Reporter | None = None,
                   variant: str = "auto", heatmap: Path | None = None, tta: bool = False) -> list[dict]:
    """:func:`vistrain.api.predict` for an export folder. ``unsure`` defaults to the export's threshold
    (0: never). ``tta``: average each image with its mirror image. ``heatmap``: a folder for each
    answer's class activation map, from the exported features and head (the same map as the run's
    Grad-CAM, see :mod:`vistrain.heatmap`)."""
    check_answer_options(top_k, unsure)
    ui = reporter or SilentReporter()
    predictor = OnnxPredictor.from_folder(folder, variant)
    threshold = unsure if unsure is not None else predictor.unsure_threshold
    draw = None
    if heatmap is not None:
        if predictor.head_weight is None:
            raise ValueError(f"{folder}: no head.safetensors, which heat maps need (export the run again)")

        def draw(paths: list[str], pixels: np.ndarray, logits: np.ndarray, feature_maps: np.ndarray) -> None:
            # In the same pass as the answers: each photo is decoded and run once.
            for path, px, lo, fm in zip(paths, pixels, logits, feature_maps):
                best = int(lo.argmax())
                save_heatmap(Path(heatmap), path, predictor.classes[best], px, predictor.heatmap(fm, best))

    rows = classify_files(lambda paths, advance: predictor.predict_paths(paths, advance, draw, tta),
                          predictor.classes, inputs, top_k, threshold, ui)
    if csv_path is not None:
        write_predictions_csv(rows, Path(csv_path), top_k)
    if into is not None:
        sort_into(rows, Path(into), predictor.classes)
    return rows


def evaluate_export(folder: Path | str, data: str | Path, label_from_name: str | None = None,
                    reporter: Reporter | None = None, cache_dir: Path | str | bool | None = None,
                    variant: str = "auto", tta: bool = False) -> dict:
    """:func:`vistrain.api.evaluate` for an export folder (``tta``: as there, with the gain). Images
    that trained or validated the model are recognised while the run it came from (``source_run``)
    is still there."""
    ui = reporter or SilentReporter()
    predictor = OnnxPredictor.from_folder(folder, variant)
    index, y_true = labelled_index(data, label_from_name, cache_dir, predictor.classes, ui)
    views, similarity, unknown_pred = predict_labelled(predictor.outputs_from_paths, index, ui, tta)
    y_pred = views.mean(axis=1).argmax(axis=1)
    source = predictor.info.extra.get("source_run")
    seen = source is not None and (Path(source) / "split.csv").is_file()
    try:
        extra = json.loads((Path(source) / "config.json").read_text()) if seen else {}
    except (OSError, ValueError):
        extra = {}
    metrics = labelled_metrics(index, predictor.classes, y_true, y_pred, predictor.familiarity, similarity,
                               Path(source) if seen else None, extra, unknown_pred)
    metrics["model"] = {"export": str(predictor.model_path), "variant": predictor.variant, "source_run": source}
    if tta:
        metrics["tta"] = tta_gain(views, y_true)
    if source and not seen:
        metrics["notes"].append(f"the run this model came from ({source}) is not here: images it trained on "
                                "cannot be recognised, so the accuracy may include some")
    return metrics

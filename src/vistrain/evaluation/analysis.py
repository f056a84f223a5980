"""Everything the report shows about a model on one labelled set, computed once.

Without data, the set is the run's validation split (from ``split.csv``): the temperature and
the 'unsure' threshold are refitted there and stored in the run. With data (e.g. a test folder),
the run's stored settings are applied and judged on images they never saw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vistrain.data.split import split_rows
from vistrain.evaluation.abstention import (
    CoverageCurve,
    apply_threshold,
    coverage_curve,
    threshold_for_precision,
)
from vistrain.evaluation.calibration import (
    expected_calibration_error,
    nll,
    reliability_bins,
)
from vistrain.evaluation.confidence import (
    DEFAULT_TARGET_PRECISION,
    apply_confidence,
    fit_confidence,
)
from vistrain.evaluation.intervals import metrics_with_intervals
from vistrain.evaluation.labelled import (
    known_and_unknown,
    labelled_index,
    no_known_label,
    predict_labelled,
    predict_paths,
    unknown_labels,
)
from vistrain.evaluation.metrics import classification_metrics
from vistrain.evaluation.predictor import Predictor, softmax
from vistrain.evaluation.seen import Look, overlap_with_run
from vistrain.familiarity import unfamiliar_summary
from vistrain.models.classifier import CONFIG_FILE
from vistrain.progress import Reporter, SilentReporter


class ReportError(ValueError):
    """A run or data set the report cannot use; the message names the file and the reason."""


@dataclass
class Analysis:
    source: str  # what the images are, in words
    fitted_here: bool  # temperature and threshold fitted on these very images (in-sample)
    classes: list[str]
    paths: list[str]
    y_true: np.ndarray
    logits: np.ndarray  # N x classes (TTA-averaged when asked)
    temperature: float
    metrics: dict  # classification_metrics + 95% intervals
    calibration: dict  # ece/nll before and after, temperature, n
    abstention: dict  # target_precision, threshold, coverage, precision (on these images)
    curve: CoverageCurve
    skipped: list[dict] = field(default_factory=list)
    tta: dict | None = None  # accuracy without / with mirror averaging, when asked
    overlap: dict | None = None  # images of a given folder the run trained on or validated with (seen.py)
    unfamiliar: dict | None = None  # images of a given folder unlike every training photo (familiarity.py)

    @property
    def probabilities(self) -> np.ndarray:
        return softmax(self.logits, self.temperature)

    @property
    def y_pred(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    @property
    def losses(self) -> np.ndarray:
        """Cross-entropy of each image under the calibrated probabilities (fastai's 'top losses')."""
        p = self.probabilities[np.arange(len(self.y_true)), self.y_true]
        return -np.log(np.maximum(p, 1e-12))


def validation_records(run_dir: Path, extra: dict) -> list[tuple[str, str]]:
    """``split.csv``'s validation rows as (path, label), read as export and ``evaluate`` read them:
    a relative path is found under the training folder named in the run's config (``extra``), not
    only under the current directory. A file that is gone keeps the path the row names."""
    split = run_dir / "split.csv"
    if not split.exists():
        raise ReportError(f"{split}: missing; give a labelled DATA folder to report on instead")
    rows = [(str(r.found or r.listed), r.label) for r in split_rows(split, extra) if r.split == "valid"]
    if not rows:
        raise ReportError(f"{split}: no validation images listed")
    return rows


@dataclass
class _Scored:
    """The images an analysis scores, their model outputs, and what it set apart."""

    source: str  # Analysis.source
    paths: list[str]
    y: np.ndarray
    views: np.ndarray  # N x views x K
    similarity: np.ndarray | None
    set_apart: dict  # unknown_labels(): images of a label the model does not know
    skipped: list[dict]
    content: dict[str, Look] = field(default_factory=dict)  # path -> what a given folder's image is


def _source(where: str, n: int, n_unknown: int) -> str:
    return f"{where} ({n} images" + (f"; {n_unknown} more with a label the model does not know, "
                                     "not scored)" if n_unknown else ")")


def _score_folder(predictor: Predictor, data: Path | str, label_from_name: str | None,
                  cache_dir: Path | bool | None, ui: Reporter, tta: bool) -> _Scored:
    """A labelled folder, scanned and predicted as ``evaluate`` does (a file failing after the scan
    is an error naming it, see ``predict_labelled``)."""
    classes = predictor.classes
    index, y = labelled_index(data, label_from_name, cache_dir, classes, ui)
    views, similarity, unknown_pred = predict_labelled(predictor.outputs_from_paths, index, ui, tta)
    return _Scored(_source(str(data), len(index.records), len(index.unknown)), [r.path for r in index.records], y,
                   views, similarity, unknown_labels([r.label for r in index.unknown], unknown_pred, classes),
                   [{"path": r.path, "reason": r.reason} for r in index.skipped],
                   {r.path: Look(r.sha1, r.phash, r.colour) for r in index.records})


def _score_validation(run_dir: Path, predictor: Predictor, ui: Reporter, tta: bool) -> _Scored:
    """The run's validation split, from ``split.csv``: a file gone since training is left out and listed."""
    classes, split = predictor.classes, run_dir / "split.csv"
    pairs = validation_records(run_dir, predictor.config.extra)
    skipped = [{"path": p, "reason": "file no longer exists"} for p, _ in pairs if not Path(p).is_file()]
    pairs = [(p, lab) for p, lab in pairs if Path(p).is_file()]
    # split.csv's labels are spelt as the run spells its classes (training wrote both from one scan).
    known, unknown, y = known_and_unknown([lab for _, lab in pairs], classes, split, verbatim=True)
    if pairs and not known:
        raise ReportError(no_known_label(split, [lab for _, lab in pairs], classes))
    views, similarity, errors, unknown_pred = predict_paths(
        predictor.outputs_from_paths, [pairs[i][0] for i in known], [pairs[i][0] for i in unknown], ui, tta)
    # Unlike a scanned folder's (predict_labelled), these files are read here for the first time in
    # this run: one that cannot be is left out and listed, as the scan does with a folder's and
    # export's check does with the same split.csv, rather than stopping the report.
    skipped += [{"path": pairs[i][0], "reason": why} for i, why in zip(known, errors) if why]
    ok = [j for j, why in enumerate(errors) if not why]
    return _Scored(_source(f"the validation split of {run_dir}", len(known), len(unknown)),
                   [pairs[known[j]][0] for j in ok], y[ok], views[ok], None if similarity is None else similarity[ok],
                   unknown_labels([pairs[i][1] for i in unknown], unknown_pred, classes), skipped)


def analyse(run_dir: Path | str, predictor: Predictor, data: Path | str | None = None, label_from_name: str | None = None,
            target_precision: float | None = None, tta: bool = False, reporter: Reporter | None = None,
            cache_dir: Path | bool | None = None) -> Analysis:
    """``cache_dir``: as ``evaluate``'s (False: none; None: the default)."""
    ui = reporter or SilentReporter()
    run_dir = Path(run_dir)
    classes = predictor.classes
    # Images of a label the model does not know are predicted too (what it calls a class it never
    # saw is worth a line) but scored apart; only a folder with no known label at all is refused.
    scored = (_score_validation(run_dir, predictor, ui, tta) if data is None
              else _score_folder(predictor, data, label_from_name, cache_dir, ui, tta))
    if not scored.paths:
        raise ReportError(f"{scored.source}: no image could be classified")
    views = scored.views.astype(np.float64)
    paths, y, skipped = scored.paths, scored.y, scored.skipped
    logits = views.mean(axis=1)
    tta_info = None
    if tta:
        plain, both = float((views[:, 0].argmax(1) == y).mean()), float((logits.argmax(1) == y).mean())
        tta_info = {"accuracy_plain": plain, "accuracy_tta": both, "gain": both - plain, "n": len(y)}

    target = target_precision or predictor.config.extra.get("calibration", {}).get("target_precision") \
        or DEFAULT_TARGET_PRECISION
    if data is None:
        settings = fit_confidence(logits, y, target)
        apply_confidence(predictor.config, settings)
        store_confidence(run_dir, settings)
        temperature = settings["temperature"]
        calibration = settings["calibration"]
        abst = {k: calibration[k] for k in ("target_precision", "coverage", "precision")}
        abst["threshold"] = settings["unsure_threshold"]
    else:
        temperature = predictor.config.temperature
        before, after = softmax(logits, 1.0), softmax(logits, temperature)
        calibration = {"temperature": temperature, "n": len(y),
                       "ece_before": expected_calibration_error(before, y), "ece_after": expected_calibration_error(after, y),
                       "nll_before": nll(logits, y, 1.0), "nll_after": nll(logits, y, temperature),
                       "fitted_on": "validation (stored in the run)"}
        threshold = predictor.config.unsure_threshold
        cov, prec = apply_threshold(after, y, threshold)
        here = threshold_for_precision(after, y, target)
        abst = {"target_precision": target, "threshold": threshold, "coverage": cov, "precision": prec,
                "threshold_here": here.threshold, "coverage_here": here.coverage}
    metrics = metrics_with_intervals(classification_metrics(y, logits.argmax(1), classes), y, logits.argmax(1))
    metrics.update(scored.set_apart)
    overlap = None if data is None else overlap_with_run(run_dir, predictor.config.extra, paths, y, logits.argmax(1),
                                                         [scored.content.get(p) for p in paths])
    # On the run's validation photos the threshold was set (99% familiar by construction): only new data says anything.
    unfamiliar = None if data is None or scored.similarity is None else unfamiliar_summary(
        predictor.familiarity, scored.similarity, y, logits.argmax(1))
    return Analysis(scored.source, data is None, classes, paths, y, logits, temperature, metrics, calibration, abst,
                    coverage_curve(softmax(logits, temperature), y), skipped, tta_info, overlap, unfamiliar)


def reliability_pair(a: Analysis) -> tuple[list, list]:
    return reliability_bins(softmax(a.logits, 1.0), a.y_true), reliability_bins(a.probabilities, a.y_true)


def store_confidence(run_dir: Path, settings: dict) -> None:
    """Update the run's config.json in place with refitted confidence settings (nothing else changes)."""
    path = run_dir / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: cannot read the run configuration ({exc})") from exc
    config.update(settings)
    path.write_text(json.dumps(config, indent=2) + "\n")

"""The confidence settings stored with every run: a temperature and a default 'unsure' threshold."""

from __future__ import annotations

import numpy as np

from vistrain.evaluation.abstention import threshold_for_precision
from vistrain.evaluation.calibration import calibrate, set_aside
from vistrain.evaluation.predictor import softmax
from vistrain.models.classifier import ModelConfig

DEFAULT_TARGET_PRECISION = 0.95
# Below this share of validation images answered, the threshold gets a line of its own: on 30
# validation digits, 0.9868 answered 13% of them, and predict then said "unsure" for every photo.
LOW_COVERAGE = 0.5


def fit_confidence(logits: np.ndarray, labels: np.ndarray, target_precision: float = DEFAULT_TARGET_PRECISION) -> dict:
    """Temperature by NLL on these (validation) logits, then the threshold reaching the target
    precision on the temperature-scaled probabilities, which are the ones ``predict`` compares."""
    labels = np.asarray(labels, dtype=int)
    cal = calibrate(logits, labels)
    abst = threshold_for_precision(softmax(logits, cal.temperature), labels, target_precision)
    return {
        "temperature": round(cal.temperature, 6),
        "unsure_threshold": None if abst.threshold is None else round(abst.threshold, 6),
        "calibration": {
            **cal.to_dict(),
            "target_precision": target_precision,
            "coverage": round(abst.coverage, 6),
            "precision": round(abst.precision, 6),
            "fitted_on": "validation",
        },
    }


def apply_confidence(config: ModelConfig, settings: dict) -> None:
    """Put fitted settings into a model configuration (what ``config.json`` will hold)."""
    config.temperature = settings["temperature"]
    config.unsure_threshold = settings["unsure_threshold"]
    config.extra["calibration"] = settings["calibration"]


def describe(config: ModelConfig) -> str:
    """One line for a summary: what the temperature did and what the threshold costs."""
    c = config.extra.get("calibration")
    if not c:
        return "no calibration stored (older run): vistrain report RUN fits one"
    if set_aside(c):
        why = ("did not lower the held-out log-loss" if c.get("heldout_nll_raw") is not None
               else "could not be checked on held-out images (fewer than 10)")
        text = (f"raw softmax kept (calibration error {c['ece_before']:.1%} on {c['n']} validation images): "
                f"a temperature of {c['fitted_temperature']:.2f} {why}")
    else:
        text = (f"temperature {config.temperature:.2f} (calibration error {c['ece_before']:.1%} -> "
                f"{c['ece_after']:.1%} on {c['n']} validation images)")
    if config.unsure_threshold is None:
        return text + f"; no threshold reaches {c['target_precision']:.0%} precision on validation"
    return (text + f"; 'unsure' below {config.unsure_threshold:.2f} keeps {c['target_precision']:.0%} precision "
            f"on {c['coverage']:.0%} of validation images")


def low_coverage_note(config: ModelConfig, run: str = "RUN") -> str | None:
    """A line for a threshold that leaves most validation images "unsure", and how to change it, or
    None. The threshold is the one that reaches the target precision (the rule stays): only with few
    validation images does it climb this high, and the user should hear it before predict says it."""
    c = config.extra.get("calibration") or {}
    if config.unsure_threshold is None or c.get("coverage") is None or c["coverage"] >= LOW_COVERAGE:
        return None
    return (f"at {config.unsure_threshold:.2f}, predict answers 'unsure' for {1 - c['coverage']:.0%} of photos like "
            f"the validation ones; `vistrain predict {run} PHOTOS --unsure P` takes a lower threshold P (more answers, "
            f"less precise), --unsure 0 turns it off")

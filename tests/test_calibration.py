"""Temperature scaling, ECE, abstention thresholds and confidence intervals on synthetic numbers."""

from __future__ import annotations

import numpy as np
import pytest

from vistrain.evaluation.abstention import (
    apply_threshold,
    coverage_curve,
    threshold_for_precision,
)
from vistrain.evaluation.calibration import (
    calibrate,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from vistrain.evaluation.intervals import bootstrap_f1, metrics_with_intervals, wilson
from vistrain.evaluation.metrics import classification_metrics
from vistrain.evaluation.predictor import softmax


def _sampled(n=4000, k=4, seed=0):
    """Logits whose softmax is the true label distribution (calibrated by construction)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, size=(n, k))
    p = softmax(z)
    labels = np.minimum((rng.random((n, 1)) > p.cumsum(axis=1)).sum(axis=1), k - 1)
    return z, labels


def test_temperature_recovers_the_overconfidence_factor():
    z, y = _sampled()
    assert fit_temperature(z * 3.0, y) == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(z / 2.0, y) == pytest.approx(0.5, rel=0.1)


def test_scaling_lowers_ece_and_nll_and_keeps_every_prediction():
    z, y = _sampled()
    c = calibrate(z * 3.0, y)
    assert c.ece_before > 0.1 and c.ece_after < 0.04
    assert c.nll_after < c.nll_before
    assert (softmax(z * 3.0, c.temperature).argmax(1) == (z * 3.0).argmax(1)).all()


def test_ece_by_hand():
    # Two images at 0.9 confidence (one right), two at 0.6 (both right): |0.5-0.9|/2 + |1-0.6|/2 = 0.4.
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 1, 0, 1])
    assert expected_calibration_error(p, y) == pytest.approx(0.4)
    bins = reliability_bins(p, y)
    assert [b.count for b in bins if b.count] == [2, 2]
    assert sum(b.count for b in bins) == 4


def test_threshold_for_target_precision():
    # Confidences 0.9 right, 0.8 right, 0.7 wrong, 0.6 right.
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    y = np.array([0, 1, 1, 1])
    a = threshold_for_precision(p, y, 1.0)
    # Halfway between the last answered (0.8) and the first left unsure (0.7): on neither's own value.
    assert (a.coverage, a.precision) == (0.5, 1.0) and a.threshold == pytest.approx(0.75)
    b = threshold_for_precision(p, y, 0.75)
    assert (b.coverage, b.precision) == (1.0, 0.75) and 0.6 - 1e-3 < b.threshold < 0.6 - 1e-5
    assert apply_threshold(p, y, a.threshold) == (0.5, 1.0) and apply_threshold(p, y, b.threshold) == (1.0, 0.75)
    assert apply_threshold(p, y, 0.8) == (0.5, 1.0)
    assert apply_threshold(p, y, 0.99) == (0.0, 0.0)


def test_no_threshold_when_the_most_confident_answer_is_wrong():
    p = np.array([[0.95, 0.05], [0.6, 0.4]])
    y = np.array([1, 0])
    a = threshold_for_precision(p, y, 0.95)
    assert a.threshold is None and a.coverage == 0.0
    with pytest.raises(ValueError, match="target precision"):
        threshold_for_precision(p, y, 1.5)


def test_tied_confidences_are_answered_together():
    p = np.array([[0.8, 0.2], [0.8, 0.2], [0.6, 0.4]])
    y = np.array([0, 1, 0])
    curve = coverage_curve(p, y)
    assert list(curve.coverage) == pytest.approx([2 / 3, 1.0])
    assert list(curve.accuracy) == pytest.approx([0.5, 2 / 3])


def test_wilson_known_values():
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_intervals_contain_the_estimate_and_shrink_with_more_images():
    rng = np.random.default_rng(1)
    classes = ["a", "b", "c"]
    y = rng.integers(0, 3, 300)
    y_hat = np.where(rng.random(300) < 0.8, y, (y + 1) % 3)
    m = metrics_with_intervals(classification_metrics(y, y_hat, classes), y, y_hat)
    for c in classes:
        row = m["per_class"][c]
        for key in ("precision", "recall", "f1"):
            lo, hi = row[f"{key}_ci"]
            assert lo <= row[key] <= hi and hi - lo < 0.25
    small = metrics_with_intervals(classification_metrics(y[:30], y_hat[:30], classes), y[:30], y_hat[:30])
    width = lambda mm: np.mean([mm["per_class"][c]["recall_ci"][1] - mm["per_class"][c]["recall_ci"][0] for c in classes])
    assert width(small) > 2 * width(m)
    assert m["weighted_avg"]["recall"] == pytest.approx(m["accuracy"])  # support-weighted recall is accuracy
    assert bootstrap_f1(y, y, 3).tolist() == [[1.0, 1.0]] * 3


def test_no_errors_keep_the_raw_softmax():
    z = np.array([[3.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    assert calibrate(z, np.array([0, 1, 0])).temperature == 1.0


def test_a_temperature_that_does_not_help_held_out_images_is_not_applied():
    """On 60 calibrated images a fitted T mostly fits noise: the 5-fold held-out check rejects it
    (the raw softmax stays), while real over- and under-confidence is corrected on every seed."""
    fits = [calibrate(*_sampled(n=60, seed=s)) for s in range(20)]
    rejected = [c for c in fits if c.rejected]
    assert len(rejected) >= 15
    for c in rejected:
        assert c.temperature == 1.0 and c.fitted_temperature != 1.0
        assert c.heldout_nll_scaled >= c.heldout_nll_raw
        assert (c.ece_after, c.nll_after) == (c.ece_before, c.nll_before)
    for scale in (3.0, 0.5):
        for s in range(20):
            z, y = _sampled(n=60, seed=s)
            c = calibrate(z * scale, y)
            assert not c.rejected and c.temperature == c.fitted_temperature
            assert c.heldout_nll_scaled < c.heldout_nll_raw

    from vistrain.evaluation.confidence import describe, fit_confidence
    from vistrain.models.classifier import ModelConfig

    z, y = _sampled(n=60, seed=next(s for s, c in enumerate(fits) if c.rejected))
    settings = fit_confidence(z, y)
    assert settings["temperature"] == 1.0 and settings["calibration"]["fitted_temperature"] != 1.0
    config = ModelConfig(backbone="efficientnet_lite0", classes=list("abcd"), preprocessing=None,
                         temperature=settings["temperature"], extra={"calibration": settings["calibration"]})
    assert "raw softmax kept" in describe(config) and "did not lower the held-out log-loss" in describe(config)


def test_too_few_images_to_check_keep_the_raw_softmax():
    z, y = _sampled(n=9, seed=2)
    c = calibrate(z * 3.0, y)
    assert c.fitted_temperature > 1.5  # overconfident, but 9 images cannot show it on held-out ones
    assert c.heldout_nll_raw is None and c.temperature == 1.0 and c.rejected

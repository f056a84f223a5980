"""The linear probe: exact folding of the standardisation, and no blow-up on near-constant features."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from vistrain.training.probe import (
    C_GRID,
    DEFAULT_C,
    choose_probe,
    clearly_lower,
    fit_probe,
    probe_logits,
    validation_log_loss,
)


def _photo_like(n: int = 120, f: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.gamma(2.0, 0.1, (n, f)) * rng.uniform(0.5, 2.0, f)  # spreads within 4x of each other
    x[:, :3] += 0.6 * np.eye(3)[y]
    return x, y


def test_folded_head_gives_the_fitted_models_logits() -> None:
    x, y = _photo_like()
    w, b = fit_probe(x, y, 3, C=0.3)
    sigma = x.std(0) + 1e-6
    ref = LogisticRegression(C=0.3, max_iter=2000, random_state=0).fit((x - x.mean(0)) / sigma, y)
    expected = ref.decision_function((x - x.mean(0)) / sigma)
    np.testing.assert_allclose(probe_logits(x, w, b), expected, rtol=1e-4, atol=1e-4)


def test_floor_changes_nothing_when_no_feature_is_flat() -> None:
    x, y = _photo_like()
    w, b = fit_probe(x, y, 3)
    w0, b0 = fit_probe(x, y, 3, std_floor=0.0)
    np.testing.assert_array_equal(w.numpy(), w0.numpy())
    np.testing.assert_array_equal(b.numpy(), b0.numpy())


def test_near_constant_features_do_not_get_huge_weights() -> None:
    # Like ImageNet channels on enlarged 8x8 digits: a few barely move, but follow the label.
    x, y = _photo_like()
    rng = np.random.default_rng(1)
    flat = 1e-4 * (np.eye(3)[y] + 0.5 * rng.random((len(y), 3)))
    x = np.hstack([x, flat])
    w, b = fit_probe(x, y, 3)
    w_raw, _ = fit_probe(x, y, 3, std_floor=0.0)
    flat_cols = slice(x.shape[1] - 3, None)
    assert np.abs(w_raw.numpy()[:, flat_cols]).max() > 1000  # what the floor prevents
    assert np.abs(w.numpy()[:, flat_cols]).max() < 50
    # A change of one typical feature spread in a flat channel moves the logits by little.
    nudge = np.zeros(x.shape[1])
    nudge[-1] = np.median(x.std(0))
    swing = np.abs(probe_logits(x + nudge, w, b) - probe_logits(x, w, b)).max()
    assert swing < 2.0
    # And the probe still classifies well.
    assert (probe_logits(x, w, b).argmax(1) == y).mean() > 0.9


def _few_and_noisy(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """30 examples of 3 classes in 200 features, 3 of them informative: weak regularisation overfits."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), 10 if seed == 0 else 40)
    x = rng.normal(size=(len(y), 200))
    x[:, :3] += 1.0 * np.eye(3)[y]
    return x, y


def test_regularisation_is_chosen_by_validation_log_loss() -> None:
    x, y = _few_and_noisy(0)
    xv, yv = _few_and_noisy(1)
    chosen = choose_probe(x, y, xv, yv, 3)
    assert set(chosen.losses) == set(C_GRID)
    assert chosen.C == min(C_GRID, key=chosen.losses.get)
    # Overfitting is what the choice avoids here: far stronger than the fixed default, and better.
    assert chosen.C < DEFAULT_C and chosen.losses[chosen.C] < chosen.losses[DEFAULT_C] - 0.05
    # The kept probe is exactly the probe fitted at the chosen C (not the warm-started path's).
    w, b = fit_probe(x, y, 3, C=chosen.C)
    np.testing.assert_allclose(chosen.weight.numpy(), w.numpy(), atol=1e-6)
    assert abs(validation_log_loss(probe_logits(xv, w, b), yv) - chosen.losses[chosen.C]) < 0.02


def test_a_given_c_is_used_as_is_and_no_validation_means_the_default() -> None:
    x, y = _few_and_noisy(0)
    xv, yv = _few_and_noisy(1)
    given = choose_probe(x, y, xv, yv, 3, C=1.0)
    assert given.C == 1.0 and given.losses == {}
    np.testing.assert_allclose(given.weight.numpy(), fit_probe(x, y, 3, C=1.0)[0].numpy(), atol=1e-6)
    assert choose_probe(x, y, None, None, 3).C == DEFAULT_C


def test_balanced_log_loss_counts_each_class_equally() -> None:
    logits = np.log(np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.5, 0.5]]))
    labels = np.array([0, 0, 0, 1])
    plain = validation_log_loss(logits, labels)
    balanced = validation_log_loss(logits, labels, "balanced")
    np.testing.assert_allclose(plain, (3 * -np.log(0.9) - np.log(0.5)) / 4)
    np.testing.assert_allclose(balanced, (-np.log(0.9) - np.log(0.5)) / 2)


def test_only_a_clear_gain_moves_c_away_from_the_default() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 100)
    reference = rng.normal(size=(100, 3))
    reference[np.arange(100), labels] += 1.0
    assert not clearly_lower(reference, reference, labels)
    # A uniformly better model (every image's true-class logit up by 1): clearly lower.
    better = reference.copy()
    better[np.arange(100), labels] += 1.0
    assert clearly_lower(better, reference, labels) and clearly_lower(better, reference, labels, "balanced")
    # Lower on average, but by less than the image-to-image noise of the difference: not enough.
    noisy = reference + rng.normal(scale=0.5, size=reference.shape)
    noisy[np.arange(100), labels] += 0.2
    assert validation_log_loss(noisy, labels) < validation_log_loss(reference, labels) - 0.02
    assert not clearly_lower(noisy, reference, labels)

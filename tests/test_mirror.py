"""The mirror check: flips stay on where a mirror image keeps its label, go off where it does not."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

import vistrain
from vistrain.data.augment import AugmentConfig
from vistrain.training.mirror import binomial_tail, mirror_check, mirrored


def test_binomial_tail_is_exact():
    assert binomial_tail(0, 10) == 1.0
    assert binomial_tail(10, 10) == pytest.approx(1 / 1024)
    assert binomial_tail(8, 10) == pytest.approx((45 + 10 + 1) / 1024)
    assert binomial_tail(3, 0) == 1.0


def test_chance_differences_keep_flips():
    y = np.zeros(100, dtype=int)
    pred = np.where(np.arange(100) < 90, 0, 1)  # 90% right
    pred_m = pred.copy()
    pred_m[:4] = 1  # 4 lost ...
    pred_m[90:93] = 0  # ... 3 gained: noise
    check = mirror_check(y, pred, pred_m)
    assert (check.lost, check.gained) == (4, 3) and check.p_value > 0.4
    assert check.keep_flips and "flips kept" in check.describe()


def test_a_large_significant_drop_turns_flips_off():
    y = np.arange(60) % 3
    pred = y.copy()
    pred_m = (y + 1) % 3  # every mirror image reads as another class
    pred_m[:10] = y[:10]
    check = mirror_check(y, pred, pred_m)
    assert check.lost == 50 and check.gained == 0
    assert check.p_value == pytest.approx(2.0**-50)
    assert not check.keep_flips and "flips turned off" in check.describe()
    assert check.mirrored_accuracy == pytest.approx(10 / 60)


def test_a_significant_but_tiny_drop_keeps_flips():
    y = np.zeros(1000, dtype=int)
    pred_m = np.zeros(1000, dtype=int)
    pred_m[:12] = 1  # 12 lost, 0 gained: p ~ 2e-4, but 1.2 points only
    check = mirror_check(y, y, pred_m)
    assert check.p_value < 0.01 and check.keep_flips


def test_mismatched_lengths_are_named():
    with pytest.raises(ValueError, match="differ in length"):
        mirror_check(np.zeros(3), np.zeros(3), np.zeros(4))


def test_mirrored_flips_left_to_right():
    x = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    m = mirrored(x)
    assert m.flags.c_contiguous and np.array_equal(m[:, :, 0], x[:, :, -1]) and np.array_equal(mirrored(m), x)


def test_flip_setting_is_validated():
    assert AugmentConfig().flip == "auto"
    with pytest.raises(ValueError, match="flip 'sometimes'"):
        AugmentConfig(flip="sometimes")


def handed_image(label: str, seed: int, size: int = 64) -> Image.Image:
    """A thick bar on one side and a disc low on the other: "b" and "d" are each other's mirror image."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(170, 235, size=(size, size, 3), dtype=np.uint8))
    d = ImageDraw.Draw(img)
    bar = int(rng.integers(4, 10))
    top = int(rng.integers(2, 12))
    disc = int(rng.integers(24, 32))
    colour = tuple(int(v) for v in rng.integers(0, 60, size=3))
    # "b": bar at left, disc to its right.
    d.rectangle((bar, top, bar + 10, size - 4), fill=colour)
    d.ellipse((bar + 8, size - 4 - disc, bar + 8 + disc, size - 4), outline=colour, width=8)
    return img if label == "b" else img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def write_handed(root, per_class: int, start: int):
    for label in ("b", "d"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            handed_image(label, seed=7919 * (label == "d") + i).save(root / label / f"{label}_{i}.png")


def test_training_turns_flips_off_when_mirror_images_swap_classes(tmp_path, cache_dir):
    data = tmp_path / "letters"
    write_handed(data / "train", 24, 0)
    write_handed(data / "valid", 12, 100)
    out = tmp_path / "run"
    run = vistrain.train(data, out=out, cache_dir=cache_dir, mode="finetune", epochs=1, batch_size=16,
                         image_size=64, time_budget=None)
    check = run.result.mirror
    assert check is not None and check.n == 24
    assert check.accuracy >= 0.8 and check.mirrored_accuracy <= 0.3  # mirrored "b" reads as "d"
    assert not check.keep_flips
    assert any("flips turned off" in note for note in run.result.notes)
    recorded = json.loads((out / "config.json").read_text())["training"]["mirror_check"]
    assert recorded["flips_used"] is False and math.isclose(recorded["accuracy"], check.accuracy)


def test_training_keeps_flips_when_mirror_images_keep_their_class(split_folders, tmp_path, cache_dir):
    run = vistrain.train(split_folders, out=tmp_path / "run", cache_dir=cache_dir, mode="finetune", epochs=1,
                         batch_size=8, image_size=64, time_budget=None)
    check = run.result.mirror
    assert check is not None and check.keep_flips
    assert check.mirrored_accuracy >= check.accuracy - 0.2


def test_an_explicit_flip_setting_skips_the_check(split_folders, tmp_path, cache_dir):
    run = vistrain.train(split_folders, out=tmp_path / "run", cache_dir=cache_dir, mode="finetune", epochs=1,
                         batch_size=8, image_size=64, time_budget=None, augment=AugmentConfig(flip=False))
    assert run.result.mirror is None

"""The learning-rate range test: its suggestion rule, the command's plot, and train --lr auto."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

import vistrain
from vistrain.cli import main
from vistrain.commands.lr_find import learning_rate
from vistrain.progress import SilentReporter
from vistrain.training.lr_find import smooth, suggest


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """Class folders where every third photo is filed under the next class: labels the probe head
    cannot fit, so fine-tuning has a loss to bring down and the range test a curve to read."""
    import shutil

    from conftest import write_class_folders

    base = tmp_path_factory.mktemp("noisy")
    data = write_class_folders(base / "photos", per_class=10)
    classes = sorted(p.name for p in data.iterdir())
    for i, c in enumerate(classes):
        for f in sorted((data / c).iterdir())[::3]:
            shutil.move(f, data / classes[(i + 1) % len(classes)] / f"moved_{f.name}")
    return data, base / "cache"


def test_suggestion_is_a_tenth_of_the_minimum_and_steepest_is_before_it():
    lrs = np.logspace(-7, 0, 100)
    x = np.log10(lrs)
    loss = 1 + 0.02 * (x + 3) ** 2  # lowest at 1e-3
    s, steepest, lowest = suggest(lrs, loss)
    assert lowest == pytest.approx(1e-3, rel=0.2) and s == pytest.approx(lowest / 10)
    assert steepest is not None and steepest < lowest
    assert suggest(lrs, np.linspace(1, 2, 100))[1] is None  # never falls: no steepest descent
    np.testing.assert_allclose(smooth(np.full(20, 0.7)), 0.7)  # bias-corrected: no warm-up dip


def test_noise_on_a_loss_near_zero_is_not_a_fall():
    """A head that fits the photos: the smoothed loss wanders 0.00044 -> 0.00024 (a 45% "fall" of
    0.0002 nats) before blowing up; that is batch noise, not a rate to suggest (it suggested 0.00046)."""
    lrs = np.logspace(-7, 0, 10)
    flat = np.array([0.000438, 0.000382, 0.000406, 0.000436, 0.000374, 0.000297, 0.00024, 6.79, 45.8, 48.7])
    assert suggest(lrs, flat)[1] is None
    # The same shape a thousand times higher is a real fall (0.2 nats, 45%): it still suggests.
    assert suggest(lrs, flat * 1000)[1] is not None
    # A fall of 5% of the loss is within what batches move it by: nothing either.
    assert suggest(lrs, np.array([1.0, 0.99, 0.98, 0.97, 0.96, 0.955, 0.95, 3.0, 9.0, 9.0]))[1] is None


def test_lr_find_command_plots_and_suggests(noisy, tmp_path, capsys):
    data, cache = noisy
    png = tmp_path / "plots" / "lr.png"
    assert main(["lr-find", str(data), "--out", str(png), "--steps", "12", "--image-size", "64",
                 "--batch-size", "8", "--cache-dir", str(cache)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Suggested learning rate" in out and "steepest descent at" in out and ("12 steps" in out or "stopped" in out)
    assert "use it: vistrain train" in out
    with Image.open(png) as im:
        assert im.size[0] > 300 and np.asarray(im.convert("L")).std() > 5
    assert main(["lr-find", str(data), "--steps", "3", "--cache-dir", str(cache)]) == 2
    assert "at least 10 steps" in capsys.readouterr().out
    assert main(["lr-find", str(data), "--backbone", "efficientnet_lite0+efficientnet_lite1", "--cache-dir", str(cache)]) == 2
    assert "is an ensemble of linear probes" in " ".join(capsys.readouterr().out.split())


def _train_lr_auto(data, out, cache, steps: int) -> tuple[float, list[str]]:
    """One fine-tuning epoch with --lr auto: the rate it trained with and what it logged."""
    logs = []

    class Log(SilentReporter):
        def log(self, message):
            logs.append(message)

    run = vistrain.train(data, out=out, mode="finetune", epochs=1, lr="auto", lr_find_steps=steps,
                         image_size=64, batch_size=8, time_budget=None, cache_dir=cache, reporter=Log())
    return json.loads((run.path / "config.json").read_text())["training"]["lr"], logs


def test_train_lr_auto_uses_the_suggestion(noisy, tmp_path):
    data, cache = noisy
    lr, logs = _train_lr_auto(data, tmp_path / "run", cache, steps=10)
    assert isinstance(lr, float) and lr != 1e-4 and 0 < lr < 0.1
    assert any(f"lr-find: learning rate {lr:.2g}" in m for m in logs)
    assert learning_rate("auto") == "auto" and learning_rate("3e-4") == 3e-4
    with pytest.raises(argparse.ArgumentTypeError, match="neither a number nor 'auto'"):
        learning_rate("fast")



def test_lr_find_starts_from_the_class_weighted_probe_training_would_start_from(tmp_path, monkeypatch):
    from conftest import write_class_folders

    from vistrain.data.dataset import DataConfig, build_index
    from vistrain.training import lr_find
    from vistrain.training.trainer import TrainConfig

    data = tmp_path / "photos"
    write_class_folders(data, per_class=5, classes=("circles",))
    write_class_folders(data, per_class=15, classes=("squares", "stripes"))  # 3:1, which training weights
    data_cfg = DataConfig(data, cache_dir=tmp_path / "cache")
    index = build_index(data_cfg)
    real, seen = lr_find.choose_probe, []

    def recording(*args, **kwargs):
        seen.append(kwargs.get("class_weight"))
        return real(*args, **kwargs)

    monkeypatch.setattr(lr_find, "choose_probe", recording)
    for balance, expected in (("auto", "balanced"), ("none", None)):
        cfg = TrainConfig(data=data_cfg, out=tmp_path / "unused", image_size=64, batch_size=8,
                          balance=balance)
        result = lr_find.lr_range_test(index, cfg, steps=10)
        assert seen[-1] == expected
        assert len(result.losses) == 10 or result.stopped



def test_a_loss_that_never_falls_suggests_nothing(trained_run, tmp_path, capsys):
    """Cleanly separable photos: the probe head fits them from the first step (loss ~0.001), so the
    lowest loss is noise at the first rates, and a tenth of it (1e-8) would freeze fine-tuning."""
    _, data = trained_run
    cache = trained_run[0].parent / "cache"  # the shared run's features: no backbone export here
    assert main(["lr-find", str(data), "--out", str(tmp_path / "lr.png"), "--steps", "12", "--image-size", "64",
                 "--batch-size", "8", "--cache-dir", str(cache)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "No suggestion: the loss never fell from 1e-07 to 1" in out
    assert "Suggested learning rate" not in out and "use it:" not in out
    lr, logs = _train_lr_auto(data, tmp_path / "run", cache, steps=12)
    assert lr == 1e-4  # the default, said so
    assert any("lr-find: the loss never fell" in m and "default learning rate 0.0001 is kept" in m for m in logs)

"""Imbalance corrections, learning-rate schedules and divergence stops, on real training runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FAST, write_class_folders
from sklearn.metrics import f1_score

import vistrain
from vistrain.training.balance import (
    class_weights,
    collapsed_class,
    imbalance_ratio,
    macro_f1,
    resolve_balance,
    sample_probabilities,
)
from vistrain.training.probe import fit_probe, probe_logits
from vistrain.training.schedules import SCHEDULES, build_scheduler, lr_curves, lr_factor
from vistrain.training.trainer import TrainError


def test_auto_picks_exactly_one_correction_from_the_measured_ratio():
    balanced = np.array([0] * 10 + [1] * 9)
    mild = np.array([0] * 20 + [1] * 8)
    strong = np.array([0] * 40 + [1] * 5)
    assert imbalance_ratio(balanced, 2) == pytest.approx(10 / 9)
    assert [resolve_balance("auto", imbalance_ratio(y, 2)) for y in (balanced, mild, strong)] == ["none", "loss", "sampler"]
    assert resolve_balance("loss", 8.0) == "loss" and resolve_balance("none", 8.0) == "none"
    with pytest.raises(ValueError, match="'both' is not one of auto, sampler, loss, none"):
        resolve_balance("both", 2.0)


def test_weights_give_every_class_the_same_total_mass():
    y = np.array([0] * 30 + [1] * 6 + [2] * 3)
    w = class_weights(y, 4)  # class 3 has no image
    assert w[3] == 0 and np.allclose(np.bincount(y, weights=w[y]), len(y) / 3)
    p = sample_probabilities(y, 4)
    assert p.sum() == pytest.approx(1.0)
    assert np.allclose(np.bincount(y, weights=p), 1 / 3)


def test_macro_f1_and_collapse_detection():
    rng = np.random.default_rng(0)
    y, yhat = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    assert macro_f1(y, yhat, 4) == pytest.approx(f1_score(y, yhat, average="macro"))
    assert collapsed_class(np.array([2, 2, 2]), np.array([0, 1, 2])) == 2
    assert collapsed_class(np.array([2, 2, 2]), np.array([2, 2, 2])) is None  # one true class: not a collapse
    assert collapsed_class(np.array([0, 1, 1]), np.array([0, 1, 2])) is None


def test_balanced_probe_predicts_the_minority_class_more_often():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, (200, 4)), rng.normal(0.8, 1, (20, 4))])  # overlapping classes, 10:1
    y = np.array([0] * 200 + [1] * 20)
    plain = probe_logits(x, *fit_probe(x, y, 2)).argmax(1)
    balanced = probe_logits(x, *fit_probe(x, y, 2, class_weight="balanced")).argmax(1)
    assert (balanced == 1).sum() > 2 * max(1, (plain == 1).sum())
    assert macro_f1(y, balanced, 2) > macro_f1(y, plain, 2)


def test_schedules_follow_their_documented_shapes():
    total = 90
    curves = lr_curves(total)
    assert set(curves) == set(SCHEDULES)
    assert curves["constant"] == [1.0] * total
    assert curves["exp-decay"][0] == 1.0 and curves["exp-decay"][-1] == pytest.approx(0.01)
    restarts = curves["cosine-restarts"]
    assert [i for i in range(1, total) if restarts[i] > restarts[i - 1] + 0.5] == [30, 60]  # two restarts: 3 cycles
    # onecycle is torch's OneCycleLR, as fine-tuning always used: the documented curve matches it step by step.
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = build_scheduler("onecycle", opt, total)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"] / 1e-3)
        opt.step()
        sched.step()
    np.testing.assert_allclose(seen, curves["onecycle"], rtol=1e-6)
    with pytest.raises(ValueError, match="schedule 'linear' is not one of"):
        lr_factor("linear", 0, 10)


def test_bad_balance_or_schedule_is_rejected_by_name(class_folders, tmp_path):
    with pytest.raises(TrainError, match="balance method 'both'"):
        vistrain.train(class_folders, out=tmp_path / "r", balance="both", **FAST)
    with pytest.raises(TrainError, match="schedule 'cosine'"):
        vistrain.train(class_folders, out=tmp_path / "r", schedule="cosine", **FAST)


@pytest.fixture
def imbalanced(tmp_path):
    root = tmp_path / "imb"
    write_class_folders(root / "train", per_class=12, classes=("circles",))
    write_class_folders(root / "train", per_class=2, classes=("squares", "stripes"), start=20)
    write_class_folders(root / "valid", per_class=3, start=50)
    return root


def test_imbalanced_finetune_uses_the_sampler_and_keeps_the_best_macro_f1(imbalanced, tmp_path, cache_dir):
    run = vistrain.train(imbalanced, out=tmp_path / "run", cache_dir=cache_dir, mode="finetune", epochs=2,
                         batch_size=8, schedule="cosine-restarts", **FAST)
    assert any("imbalanced 6.0:1; correction: sampler; best model by macro f1" in n for n in run.result.notes)
    ft = run.result.finetune
    assert len(ft.history) == 2 and ft.best_epoch in (1, 2)
    # The kept model is the epoch with the best macro F1, and the run's metrics are that model's.
    assert ft.best_score == pytest.approx(run.metrics["valid"]["macro_avg"]["f1"])
    saved = (tmp_path / "run" / "train_config.yaml").read_text()
    assert "balance: auto" in saved and "schedule: cosine-restarts" in saved


def test_diverging_run_stops_early_with_a_clear_message(split_folders, tmp_path, cache_dir):
    run = vistrain.train(split_folders, out=tmp_path / "run", cache_dir=cache_dir, mode="finetune", epochs=6,
                         batch_size=6, lr=0.9, schedule="constant", balance="none", **FAST)
    ft = run.result.finetune
    assert ft.stop_reason.startswith("training diverged:"), ft.stop_reason
    assert len(ft.history) < 6
    assert any(n.startswith("training diverged:") for n in run.result.notes)

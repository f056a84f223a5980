"""Training end to end on tiny synthetic folders: artifacts, reproducibility, resume, round trip."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from conftest import FAST
from safetensors import safe_open

import vistrain
from vistrain.models import get_backbone
from vistrain.progress import SilentReporter
from vistrain.training.trainer import TrainError


def test_probe_run_writes_every_artifact_and_learns(split_folders, tmp_path, cache_dir):
    out = tmp_path / "run"
    run = vistrain.train(split_folders, out=out, cache_dir=cache_dir, mode="probe", **FAST)
    for name in ["model.safetensors", "config.json", "metrics.json", "history.csv", "split.csv", "data_report.json"]:
        assert (out / name).exists(), name
    assert not (out / "checkpoint").exists()

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["classes"] == ["circles", "squares", "stripes"]
    assert cfg["backbone"] == "efficientnet_lite0"
    assert cfg["preprocessing"]["size"] == 64 and cfg["preprocessing"]["resize"] == "crop"
    assert cfg["vistrain_version"] == vistrain.__version__
    assert cfg["training"]["mode"] == "probe" and cfg["training"]["seed"] == 0

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["valid"]["n"] == 9 and metrics["test"]["n"] == 6
    assert metrics["valid"]["accuracy"] >= 8 / 9  # colour + shape classes are easy for ImageNet features
    assert metrics["test"]["accuracy"] >= 5 / 6
    assert set(metrics["valid"]["per_class"]["circles"]) == {"precision", "recall", "f1", "support"}
    assert np.array(metrics["valid"]["confusion_matrix"]).sum() == 9
    assert run.result.stage == "probe"
    # The probe's regularisation was chosen on validation, and the run says which.
    assert any(n.startswith("probe regularisation chosen by validation log-loss") for n in metrics["notes"])
    assert metrics["valid"]["note"].startswith("validation images chose the probe's regularisation strength")

    with (out / "split.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["split"] for r in rows} == {"train", "valid", "test"} and len(rows) == 33

    # Weights are plain tensors (safetensors), config is JSON: nothing to execute on load.
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert "head.weight" in f.keys()  # noqa: SIM118 (safe_open is not a dict)
    assert (out / "model.safetensors").read_bytes()[:8] != b"\x80\x02\x8a\x0a"  # not a pickle
    # As readable as config.json beside it (safetensors alone writes owner-only files).
    assert (out / "model.safetensors").stat().st_mode & 0o777 == (out / "config.json").stat().st_mode & 0o777


def test_loaded_run_predicts_exactly_like_the_trained_one(class_folders, tmp_path, cache_dir):
    run = vistrain.train(class_folders, out=tmp_path / "run", cache_dir=cache_dir, mode="probe", **FAST)
    images = sorted(class_folders.rglob("*.png"))[:5]
    fresh = vistrain.load(tmp_path / "run")
    a = run.predictor.predict_paths(images)
    b = fresh.predictor.predict_paths(images)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.probabilities, y.probabilities, atol=1e-5)
    rows = fresh.predict(class_folders / "circles")
    assert len(rows) == 8 and sum(r["label"] == "circles" for r in rows) >= 7


def test_same_seed_same_split_and_metrics(class_folders, tmp_path, cache_dir):
    runs = [vistrain.train(class_folders, out=tmp_path / f"r{i}", cache_dir=cache_dir, mode="probe", seed=7, **FAST)
            for i in range(2)]
    assert (tmp_path / "r0" / "split.csv").read_text() == (tmp_path / "r1" / "split.csv").read_text()
    assert runs[0].metrics["valid"] == runs[1].metrics["valid"]
    other = vistrain.train(class_folders, out=tmp_path / "r2", cache_dir=cache_dir, mode="probe", seed=8, **FAST)
    assert (tmp_path / "r2" / "split.csv").read_text() != (tmp_path / "r0" / "split.csv").read_text()
    assert other.metrics["valid"]["n"] == 6


def test_finetune_records_history_and_keeps_the_best_epoch(split_folders, tmp_path, cache_dir):
    out = tmp_path / "ft"
    run = vistrain.train(split_folders, out=out, cache_dir=cache_dir, mode="finetune", epochs=2, batch_size=8, **FAST)
    with (out / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    best = max(float(r["valid_accuracy"]) for r in rows)
    assert run.result.stage == "finetune"
    assert run.metrics["valid"]["accuracy"] == pytest.approx(best, abs=1e-6)
    assert json.loads((out / "config.json").read_text())["stage"] == "finetune"


class InterruptAfterFirstEpoch(SilentReporter):
    """Acts like a user pressing Ctrl-C once the first epoch has been checkpointed."""

    def log(self, message: str) -> None:
        if "epoch 1/" in message:
            raise KeyboardInterrupt


def test_ctrl_c_keeps_the_best_model_and_resume_finishes(split_folders, tmp_path, cache_dir):
    out = tmp_path / "ft"
    opts = dict(cache_dir=cache_dir, mode="finetune", epochs=2, batch_size=8, **FAST)
    first = vistrain.train(split_folders, out=out, reporter=InterruptAfterFirstEpoch(), **opts)
    assert first.result.finetune.interrupted
    assert len(first.result.finetune.history) == 1
    assert (out / "model.safetensors").exists() and (out / "checkpoint" / "state.json").exists()
    # Stopping means now: no further pass for the familiarity check, which the resumed run adds.
    assert first.result.familiarity is None and not (out / "familiar.safetensors").exists()
    split_before = (out / "split.csv").read_text()

    # Resuming takes the interrupted run's settings from the run folder: none need repeating.
    resumed = vistrain.train(split_folders, out=out, resume=True, cache_dir=cache_dir)
    assert [h.epoch for h in resumed.result.finetune.history] == [1, 2]
    # The flips decided on the probe, as when the run started, not on the fine-tuned weights.
    assert resumed.result.mirror == first.result.mirror and first.result.mirror is not None
    training = json.loads((out / "config.json").read_text())["training"]
    assert (training["mode"], training["epochs"], training["batch_size"], training["image_size"]) == ("finetune", 2, 8, 64)
    assert not resumed.result.finetune.interrupted
    assert (out / "split.csv").read_text() == split_before
    assert (out / "familiar.safetensors").exists()
    assert not (out / "checkpoint").exists()

    # The same two epochs without interruption give the same result: resuming loses nothing.
    straight = vistrain.train(split_folders, out=tmp_path / "straight", **opts)
    assert [round(h.valid_loss, 4) for h in straight.result.finetune.history] == \
        [round(h.valid_loss, 4) for h in resumed.result.finetune.history]


class CrashAfterFirstEpoch(SilentReporter):
    """Like the process dying (power cut, OOM kill) once the first epoch has been checkpointed:
    no KeyboardInterrupt handling, nothing written at the end."""

    def log(self, message: str) -> None:
        if "epoch 1/" in message:
            raise RuntimeError("killed")


def test_resume_after_a_crash(split_folders, tmp_path, cache_dir):
    out = tmp_path / "ft"
    opts = dict(cache_dir=cache_dir, mode="finetune", epochs=2, batch_size=8, **FAST)
    with pytest.raises(RuntimeError, match="killed"):
        vistrain.train(split_folders, out=out, reporter=CrashAfterFirstEpoch(), **opts)
    assert not (out / "model.safetensors").exists() and (out / "checkpoint" / "state.json").exists()
    # The interrupted schedule is not re-planned halfway: a new length or rate is refused, naming both.
    with pytest.raises(TrainError, match=r"cannot change halfway: epochs 2 \(now 5\), lr 0.0001 \(now 0.001\)"):
        vistrain.train(split_folders, out=out, resume=True, cache_dir=cache_dir, epochs=5, lr=1e-3)
    with pytest.raises(TrainError, match=r"image_size 64 \(now 96\)"):
        vistrain.train(split_folders, out=out, resume=True, cache_dir=cache_dir, image_size=96)
    # Limits may change, the same values may be typed again, and --lr auto keeps the run's rate (the one
    # found at its start, when it was auto then); the checkpoint is still there to resume.
    resumed = vistrain.train(split_folders, out=out, resume=True, cache_dir=cache_dir, time_budget=None, epochs=2,
                             lr="auto")
    straight = vistrain.train(split_folders, out=tmp_path / "straight", **opts)
    assert [round(h.valid_loss, 4) for h in resumed.result.finetune.history] == \
        [round(h.valid_loss, 4) for h in straight.result.finetune.history]
    assert (out / "split.csv").read_text() == (tmp_path / "straight" / "split.csv").read_text()


def test_a_crashed_retrain_leaves_the_earlier_run_whole_until_resumed(class_folders, tmp_path, cache_dir):
    out = tmp_path / "run"
    vistrain.train(class_folders, out=out, cache_dir=cache_dir, mode="probe", seed=0, **FAST)
    earlier = {n: (out / n).read_bytes() for n in
               ("model.safetensors", "config.json", "metrics.json", "split.csv", "train_config.yaml", "audit.json")}
    opts = dict(cache_dir=cache_dir, mode="finetune", epochs=2, batch_size=8, seed=3, **FAST)
    with pytest.raises(RuntimeError, match="killed"):
        vistrain.train(class_folders, out=out, reporter=CrashAfterFirstEpoch(), **opts)
    # The earlier run still agrees with itself: its model, its metrics and the split it was scored on.
    assert {n: (out / n).read_bytes() for n in earlier} == earlier
    pending = (out / "checkpoint" / "split.csv").read_text()
    assert pending != earlier["split.csv"].decode()  # seed 3 splits differently
    assert vistrain.load(out).predictor.predict_paths(sorted(class_folders.rglob("*.png"))[:2])

    resumed = vistrain.train(class_folders, out=out, resume=True, cache_dir=cache_dir)
    assert [h.epoch for h in resumed.result.finetune.history] == [1, 2]
    assert (out / "split.csv").read_text() == pending
    assert yaml.safe_load((out / "train_config.yaml").read_text())["seed"] == 3
    assert json.loads((out / "config.json").read_text())["training"]["mode"] == "finetune"
    assert not (out / "checkpoint").exists()


def test_resume_on_other_data_is_a_clear_error(split_folders, class_folders, tmp_path, cache_dir):
    out = tmp_path / "run"
    vistrain.train(split_folders, out=out, cache_dir=cache_dir, mode="probe", **FAST)
    with pytest.raises(TrainError, match="cannot resume on .*trained on"):
        vistrain.train(class_folders, out=out, cache_dir=cache_dir, resume=True)


def test_resume_without_checkpoint_is_a_clear_error(class_folders, tmp_path, cache_dir):
    with pytest.raises(TrainError, match="nothing to resume"):
        vistrain.train(class_folders, out=tmp_path / "none", cache_dir=cache_dir, resume=True, **FAST)


def test_auto_mode_skips_finetuning_that_cannot_fit_the_budget(class_folders, tmp_path, cache_dir):
    run = vistrain.train(class_folders, out=tmp_path / "r", cache_dir=cache_dir, mode="auto", image_size=64,
                         time_budget=0.5)
    assert run.result.stage == "probe" and run.result.model_config.backbone == "efficientnet_lite0"
    assert any("does not fit the time budget" in n for n in run.result.notes)
    # No time is left for partner probes either: the note points to what more time could buy,
    # with a backbone name that works.
    note = next(n for n in run.result.notes if "no time left for an ensemble" in n)
    hinted = note.rsplit("--backbone ", 1)[1]
    assert hinted == "efficientnet_lite0+efficientnet_lite1+efficientnet_lite2"
    assert get_backbone(hinted).num_features == 3 * 1280
    # No epoch ran: the validation note says what validation chose, not "the best epoch".
    assert "best epoch" not in run.metrics["valid"]["note"]


@pytest.mark.parametrize("option, value, message", [
    ("mode", "deep", "mode 'deep'"),
    ("epochs", 0, "epochs must be at least 1"),
    ("backbone", "vgg", "unknown backbone 'vgg'"),
    ("lr", 5.0, "learning rate 5.0"),
    ("image_size", 8, "image size 8"),
    ("resize", "stretch", "resize method 'stretch'"),
])
def test_bad_settings_name_the_value(class_folders, tmp_path, option, value, message):
    with pytest.raises(ValueError, match=message):
        vistrain.train(class_folders, out=tmp_path / "r", **{option: value})


def test_a_run_is_not_written_into_the_data_folder_itself(class_folders):
    before = sorted(p.name for p in class_folders.iterdir())
    with pytest.raises(ValueError, match="is the data folder itself"):
        vistrain.train(class_folders, out=class_folders / ".", mode="probe")
    assert sorted(p.name for p in class_folders.iterdir()) == before


class StageRecorder(SilentReporter):
    def __init__(self):
        self.stages: dict[str, int] = {}

    def stage(self, name, total, unit="img"):
        self.stages[name] = self.stages.get(name, 0) + total
        return super().stage(name, total, unit)


def test_second_run_reads_features_from_the_cache(class_folders, tmp_path, cache_dir):
    first, second = StageRecorder(), StageRecorder()
    a = vistrain.train(class_folders, out=tmp_path / "a", cache_dir=cache_dir, mode="probe", reporter=first, **FAST)
    b = vistrain.train(class_folders, out=tmp_path / "b", cache_dir=cache_dir, mode="probe", reporter=second, **FAST)
    assert first.stages["features"] == 24
    assert "features" not in second.stages and "decode" not in second.stages
    assert a.metrics["valid"] == b.metrics["valid"]
    np.testing.assert_allclose(a.predictor.model.head.weight.detach().cpu(), b.predictor.model.head.weight.detach().cpu(), atol=1e-5)
    # One new photo: only its features are computed.
    from conftest import make_image

    make_image("circles", 4242).save(class_folders / "circles" / "new.png")
    third = StageRecorder()
    vistrain.train(class_folders, out=tmp_path / "c", cache_dir=cache_dir, mode="probe", reporter=third, **FAST)
    assert third.stages["features"] == 1


def test_early_stopping_waits_for_the_cooling_half(split_folders, tmp_path, cache_dir):
    """A learning rate too small to change anything: the loss never improves, so training stops
    after `patience` epochs, but not before half of the planned schedule has passed."""
    run = vistrain.train(split_folders, out=tmp_path / "r", cache_dir=cache_dir, mode="finetune", epochs=6,
                         patience=1, lr=1e-12, batch_size=8, **FAST)
    ft = run.result.finetune
    assert [h.epoch for h in ft.history] == [1, 2, 3, 4]  # epoch 4 is the first past 6/2 with no gain
    assert "early stop" in ft.stop_reason
    # After the last planned epoch nothing is stopped: no "early stop" note for a schedule run to its end.
    run = vistrain.train(split_folders, out=tmp_path / "s", cache_dir=cache_dir, mode="finetune", epochs=2,
                         patience=1, lr=1e-12, batch_size=8, **FAST)
    assert len(run.result.finetune.history) == 2 and run.result.finetune.stop_reason == ""
    assert not any("early stop" in n for n in run.result.notes)


def test_training_crops_are_smaller_than_the_evaluation_input():
    from vistrain.data.transforms import Preprocessing
    from vistrain.training.finetune import train_preprocessing

    def size(s):
        return train_preprocessing(Preprocessing(s, (0.5,) * 3, (0.5,) * 3)).size

    assert (size(352), size(224), size(64)) == (288, 192, 64)


def test_kept_probe_scores_the_test_split_from_cached_features(split_folders, tmp_path, cache_dir):
    first, second = StageRecorder(), StageRecorder()
    a = vistrain.train(split_folders, out=tmp_path / "a", cache_dir=cache_dir, mode="probe", reporter=first, **FAST)
    assert first.stages["features"] == 18 + 9 + 6 and "test" not in first.stages
    # The same answers as the saved model gives when it runs end to end on the test files.
    test = sorted((split_folders / "test").iterdir())
    logits = a.predictor.logits_from_paths([str(p) for p in test])[0][:, 0]
    labels = np.array([a.classes.index(p.name.rsplit("_", 1)[0]) for p in test])
    assert a.metrics["test"]["accuracy"] == pytest.approx(float((logits.argmax(1) == labels).mean()))
    gaps = np.abs(a.result.test_logits[:, None, :] - logits[None, :, :]).max(axis=2)
    assert len(a.result.test_logits) == 6 and gaps.min(axis=1).max() < 1e-3  # each row is one file's logits
    # A second run on the same data computes no feature and runs no network on the test images.
    b = vistrain.train(split_folders, out=tmp_path / "b", cache_dir=cache_dir, mode="probe", reporter=second, **FAST)
    assert not {"features", "decode", "test"} & set(second.stages)
    assert b.metrics["test"] == a.metrics["test"]

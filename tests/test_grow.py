"""A time budget that fine-tuning cannot use goes to probes of partner backbones (training.grow)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from conftest import make_image, write_class_folders
from test_train import InterruptAfterFirstEpoch, StageRecorder

import vistrain
from vistrain.data.dataset import DataConfig, build_index
from vistrain.evaluation.predictor import Predictor
from vistrain.models import create_backbone, get_backbone
from vistrain.progress import SilentReporter
from vistrain.training import grow as grow_module
from vistrain.training import planning
from vistrain.training.features import backbone_features, feature_caches
from vistrain.training.grow import Probe, grow_ensemble, plan_growth, score_probe
from vistrain.training.pixels import decode_all
from vistrain.training.probe import fit_probe, probe_logits

BASE = "efficientnet_lite0"
ALL = "efficientnet_lite0+efficientnet_lite1+efficientnet_lite2"
SIZE = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("grow") / "split"
    write_class_folders(root / "train", per_class=6)
    write_class_folders(root / "valid", per_class=3, start=50)
    (root / "test").mkdir()
    for ci, name in enumerate(("circles", "squares", "stripes")):
        make_image(name, seed=9200 + ci).save(root / "test" / f"{name}_1.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def base(data, tmp_path_factory):
    """What the trainer hands over: the Lite0 probe, its features, records and labels."""
    cache = tmp_path_factory.mktemp("grow-cache")
    index = build_index(DataConfig(data, cache_dir=cache))
    prep = get_backbone(BASE).preprocessing(SIZE)
    splits = {s: index.split(s) for s in ("train", "valid", "test")}
    labels = {s: np.array([index.classes.index(r.label) for r in recs]) for s, recs in splits.items()}
    module = create_backbone(BASE).eval()
    feats = {s: backbone_features(SilentReporter(), module, splits[s], prep, feature_caches(cache, BASE, prep))
             for s in ("train", "valid")}
    w, b = fit_probe(feats["train"], labels["train"], 3)
    pixels, _ = decode_all([r.path for r in splits["valid"]], prep)
    return {"cache": cache, "prep": prep, "splits": splits, "labels": labels, "feats": feats, "w": w, "b": b,
            "pixels": pixels, "module": module}


def grow(base, single: Probe, seconds: float, cache=None):
    cache = cache or base["cache"]
    plan = plan_growth(SilentReporter(), BASE, base["splits"], base["prep"], cache, seconds, base["pixels"],
                       base["module"])
    return grow_ensemble(SilentReporter(), single, plan, base["splits"], base["labels"], base["feats"], base["prep"],
                         cache, base["pixels"], 3, "accuracy", [0.3, 0.3], 0, None)


def useless(base) -> Probe:
    """A single probe that knows nothing (all logits equal): any fitted ensemble beats it."""
    return score_probe(BASE, torch.zeros_like(base["w"]), torch.zeros_like(base["b"]), base["feats"]["valid"],
                       base["labels"]["valid"], 3, "accuracy")


def test_an_ensemble_that_wins_on_validation_is_kept(base):
    g = grow(base, useless(base), seconds=600)
    assert g.added == ["efficientnet_lite1", "efficientnet_lite2"]
    assert g.kept.backbone == ALL and "ensemble kept" in g.note
    # Its head is the averaged probes on all members' features, scored on validation as stated.
    members = [BASE, *g.added]
    f_valid = np.hstack([feature_caches(base["cache"], m, base["prep"])[0].get(
        [r.sha1 for r in base["splits"]["valid"]])[0] for m in members])
    np.testing.assert_allclose(probe_logits(f_valid, g.kept.weight, g.kept.bias), g.kept.valid_logits, atol=1e-4)
    assert g.kept.accuracy == pytest.approx(float((g.kept.valid_logits.argmax(1) == base["labels"]["valid"]).mean()))


def test_the_single_probe_is_kept_unless_beaten(base):
    perfect = Probe(BASE, base["w"], base["b"], np.zeros((9, 3)), 1.0, 0.0, 1.0)
    g = grow(base, perfect, seconds=600)
    assert g.kept is perfect and len(g.added) == 2 and "single probe kept" in g.note


def test_members_that_do_not_fit_the_time_left_are_not_added(base, tmp_path):
    fresh = tmp_path / "cache"
    shutil.copytree(base["cache"] / "onnx", fresh / "onnx")  # exported graphs only: no features cached
    g = grow(base, useless(base), seconds=0.01, cache=fresh)
    assert g.added == [] and g.kept.backbone == BASE
    short = int(g.note.split("needs ~")[1].split(" s more")[0])
    assert short >= 1 and "features of efficientnet_lite1, efficientnet_lite2" in g.note
    assert g.note.endswith(f"--backbone {ALL}")
    assert not (fresh / "features").exists()
    # Cached features cost nothing: with every member's features cached, the same tiny budget adds both.
    records = [r for recs in base["splits"].values() for r in recs]
    backbone_features(SilentReporter(), create_backbone(ALL).eval(), records, base["prep"],
                      feature_caches(fresh, ALL, base["prep"]))
    assert grow(base, useless(base), seconds=0.01, cache=fresh).added == ["efficientnet_lite1", "efficientnet_lite2"]
    assert grow(base, useless(base), seconds=0).note.startswith("no time left")


class LogRecorder(SilentReporter):
    def __init__(self):
        self.lines: list[str] = []

    def log(self, message):
        self.lines.append(message)


def test_partner_feature_lines_name_the_split_and_count(base, tmp_path):
    fresh = tmp_path / "cache"
    shutil.copytree(base["cache"] / "onnx", fresh / "onnx")
    lite0 = feature_caches(base["cache"], BASE, base["prep"])[0].folder  # its own features, as after the probe
    shutil.copytree(lite0, fresh / "features" / lite0.name)
    ui = LogRecorder()
    plan = plan_growth(ui, BASE, base["splits"], base["prep"], fresh, 600, base["pixels"], base["module"])
    grow_ensemble(ui, useless(base), plan, base["splits"], base["labels"], base["feats"], base["prep"], fresh,
                  base["pixels"], 3, "accuracy", [0.3, 0.3], 0, None)
    features = [line.strip() for line in ui.lines if line.strip().startswith("features of")]
    # One line per partner and split (it once said "features of X" twice, with nothing to tell them apart).
    assert features == [f"features of {m}: {n} {split} images" for split, n in (("training", 18), ("validation", 9))
                        for m in ("efficientnet_lite1", "efficientnet_lite2")]


def test_default_run_spends_a_budget_fine_tuning_cannot_use_on_partner_probes(data, tmp_path, monkeypatch):
    # As on clothing on 2 cores: one fine-tuning epoch would take longer than the whole budget.
    monkeypatch.setattr(planning, "plan_epochs", lambda cfg, n, step_s, eval_s: (0, 10_000.0))
    recorder = StageRecorder()
    run = vistrain.train(data, out=tmp_path / "run", cache_dir=tmp_path / "cache", image_size=SIZE,
                         time_budget=600, reporter=recorder)
    notes = run.result.notes
    assert any("fine-tuning skipped" in n for n in notes)
    verdict = next(n for n in notes if "the time went to probes of efficientnet_lite1, efficientnet_lite2:" in n)
    kept = ALL if "ensemble kept" in verdict else BASE
    assert run.result.stage == "probe" and run.result.model_config.backbone == kept
    # Lite0 on all 30 images; partners on train and valid (27 each), and on test only when their
    # ensemble is kept. No mirror check: no epoch follows that would use its verdict.
    assert recorder.stages["features"] == 30 + 2 * 27 + (2 * 3 if kept == ALL else 0)
    assert run.result.mirror is None
    # The saved run is the kept model: the same validation score, the same test answers.
    loaded = Predictor.from_folder(run.path)
    assert loaded.config.backbone == kept
    valid = sorted((data / "valid").rglob("*.png"))
    logits = loaded.logits_from_paths([str(p) for p in valid])[0][:, 0]
    labels = np.array([run.classes.index(p.parent.name) for p in valid])
    assert run.metrics["valid"]["accuracy"] == pytest.approx(float((logits.argmax(1) == labels).mean()))
    test = sorted((data / "test").iterdir())
    test_logits = loaded.logits_from_paths([str(p) for p in test])[0][:, 0]
    np.testing.assert_allclose(np.sort(test_logits, axis=0), np.sort(run.result.test_logits, axis=0), atol=1e-3)


def test_ensemble_off_keeps_one_backbone_and_names_the_alternative(data, tmp_path, monkeypatch):
    monkeypatch.setattr(planning, "plan_epochs", lambda cfg, n, step_s, eval_s: (0, 10_000.0))
    recorder = StageRecorder()
    run = vistrain.train(data, out=tmp_path / "run", cache_dir=tmp_path / "cache", image_size=SIZE,
                         time_budget=600, ensemble="off", reporter=recorder)
    assert run.result.model_config.backbone == BASE
    assert recorder.stages["features"] == 30  # Lite0 only: no partner, no mirror check computed anything
    assert run.result.mirror is None
    assert any(n.endswith(f"--backbone {ALL}") and "fine-tuning skipped" in n for n in run.result.notes)
    with pytest.raises(ValueError, match="ensemble 'always' is not one of auto, off"):
        vistrain.train(data, out=tmp_path / "bad", ensemble="always")


def test_an_epoch_or_two_of_fine_tuning_gives_way_to_partner_probes_that_fit(data, tmp_path, monkeypatch):
    monkeypatch.setattr(planning, "plan_epochs", lambda cfg, n, step_s, eval_s: (2, 100.0))
    recorder = StageRecorder()
    run = vistrain.train(data, out=tmp_path / "run", cache_dir=tmp_path / "cache", image_size=SIZE,
                         time_budget=600, reporter=recorder)
    assert "fine-tune" not in recorder.stages and not run.result.finetune.history
    assert any(n.startswith("fine-tuning skipped: 2 epoch(s) of ~100 s fit") for n in run.result.notes)
    assert any("the time went to probes of" in n for n in run.result.notes)


def test_fine_tuning_runs_its_short_plan_when_no_partner_fits(data, tmp_path, monkeypatch):
    monkeypatch.setattr(planning, "plan_epochs", lambda cfg, n, step_s, eval_s: (1, 100.0))
    monkeypatch.setattr(grow_module, "seconds_per_image", lambda *args: 1e6)  # no partner fits any budget
    recorder = StageRecorder()
    run = vistrain.train(data, out=tmp_path / "run", cache_dir=tmp_path / "cache", image_size=SIZE,
                         time_budget=600, reporter=recorder)
    assert len(run.result.finetune.history) == 1 and recorder.stages["fine-tune"] == 18
    assert run.result.model_config.backbone == BASE
    assert not any("probes of" in n or "ensemble of probes" in n for n in run.result.notes)
    # The run's file pins the one epoch the budget allowed (8 asked) and lifts the budget: without the
    # clock (the patches undone), it trains that one-epoch schedule again, to the same result.
    saved, text = _pins(run.path)
    assert (saved["epochs"], saved["time_budget"], saved["mode"]) == (1, None, "auto")
    assert "epochs 8 -> 1, time_budget 600 -> null" in text and "Not repeatable" not in text
    monkeypatch.undo()
    from vistrain.cli import main

    again = tmp_path / "again"
    assert main(["train", "--config", str(run.path / "train_config.yaml"), "--out", str(again),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    history = (again / "history.csv").read_text().splitlines()
    assert len(history) == 2  # header and the one epoch
    assert float(history[1].split(",")[3]) == pytest.approx(run.result.finetune.history[0].valid_loss, rel=1e-4)
    metrics = json.loads((again / "metrics.json").read_text())
    assert metrics["valid"] == run.metrics["valid"] and metrics["stage"] == run.result.stage


def test_cli_summary_names_a_kept_ensemble_and_ensemble_off_is_a_flag(data, tmp_path, monkeypatch, capsys):
    from vistrain.cli import main

    monkeypatch.setattr(planning, "plan_epochs", lambda cfg, n, step_s, eval_s: (0, 10_000.0))
    monkeypatch.setattr(Probe, "beats", lambda self, other: True)  # whatever these tiny images score
    args = ["train", str(data), "--image-size", str(SIZE), "--cache-dir", str(tmp_path / "cache")]
    assert main([*args, "--out", str(tmp_path / "grown")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"Kept: ensemble of linear probes ({ALL.replace('+', ', ')})" in out
    # Rich folds the long temporary path wherever the console width falls (even inside
    # "train_config.yaml"), so the line is compared with every space and line break taken out.
    flat = "".join(out.split())
    assert f"repeatitonanymachine:vistraintrain--config{tmp_path / 'grown' / 'train_config.yaml'}--outNEW_RUN" in flat
    assert main([*args, "--out", str(tmp_path / "one"), "--ensemble", "off"]) == 0
    assert "Kept: linear probe on frozen features" in " ".join(capsys.readouterr().out.split())
    assert Predictor.from_folder(tmp_path / "one").config.backbone == BASE


def _pins(run_dir) -> tuple[dict, str]:
    text = (run_dir / "train_config.yaml").read_text()
    return yaml.safe_load(text), text


def test_run_file_pins_the_ensemble_the_budget_chose_and_repeats_it_without_the_clock(data, tmp_path, monkeypatch):
    from vistrain.cli import main

    # The budget (on a "slow machine": no epoch fits) chose an ensemble of probes; asked: Lite0, auto, 600 s.
    monkeypatch.setattr(planning, "plan_epochs", lambda cfg, n, step_s, eval_s: (0, 10_000.0))
    monkeypatch.setattr(Probe, "beats", lambda self, other: True)
    first, again = tmp_path / "first", tmp_path / "again"
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert main(["train", str(data), "--image-size", str(SIZE), "--out", str(first), *cache]) == 0
    saved, text = _pins(first)
    assert (saved["backbone"], saved["mode"], saved["time_budget"]) == (ALL, "probe", None)
    assert f"backbone {BASE} -> {ALL}, mode auto -> probe, time_budget 600.0 -> null" in text
    assert "The 600 s time budget planned this run" in text
    training = json.loads((first / "config.json").read_text())["training"]
    assert training["time_budget"] == 600 and training["pinned_by_time_budget"]["backbone"] == ALL
    # On any machine (here: the real clock, where an epoch of these tiny images would fit), the file
    # trains the same ensemble to the same answers, and pins nothing more.
    monkeypatch.undo()
    assert main(["train", "--config", str(first / "train_config.yaml"), "--out", str(again), *cache]) == 0
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (first, again))
    assert m2["stage"] == "probe" and Predictor.from_folder(again).config.backbone == ALL
    assert (m1["valid"], m1["test"]) == (m2["valid"], m2["test"])
    assert _pins(again)[0] == saved and "time budget planned" not in _pins(again)[1]


def test_run_file_pins_probe_mode_when_no_epoch_fit(data, tmp_path, monkeypatch):
    monkeypatch.setattr(planning, "plan_epochs", lambda cfg, n, step_s, eval_s: (0, 10_000.0))
    run = vistrain.train(data, out=tmp_path / "run", cache_dir=tmp_path / "cache", image_size=SIZE,
                         time_budget=300, ensemble="off")
    saved, text = _pins(run.path)
    assert (saved["backbone"], saved["mode"], saved["time_budget"], saved["epochs"]) == (BASE, "probe", None, 8)
    assert "mode auto -> probe, time_budget 300 -> null" in text


def _fine_tuning_scores(monkeypatch, score: float) -> None:
    """Whatever fine-tuning these tiny images scores, its best epoch reports ``score``."""
    from vistrain.training import trainer

    real = trainer.finetune

    def finetune(*args, **kwargs):
        state = real(*args, **kwargs)
        state.best_score = score
        return state

    monkeypatch.setattr(trainer, "finetune", finetune)


def _saved_valid_accuracy(run, data) -> float:
    """Accuracy on the validation images of the model as saved in the run folder."""
    valid = sorted((data / "valid").rglob("*.png"))
    logits = Predictor.from_folder(run.path).logits_from_paths([str(p) for p in valid])[0][:, 0]
    labels = np.array([run.classes.index(p.parent.name) for p in valid])
    return float((logits.argmax(1) == labels).mean())


def test_fine_tuning_that_loses_to_the_probe_leaves_its_time_to_partner_probes(data, tmp_path, monkeypatch):
    # As on 400 clothing photos: every epoch fits, none beats the probe, most of the budget is left.
    monkeypatch.setattr(planning, "plan_epochs", lambda cfg, n, step_s, eval_s: (3, 1.0))
    _fine_tuning_scores(monkeypatch, -1.0)
    monkeypatch.setattr(Probe, "beats", lambda self, other: True)
    recorder = StageRecorder()
    run = vistrain.train(data, out=tmp_path / "run", cache_dir=tmp_path / "cache", image_size=SIZE,
                         time_budget=600, reporter=recorder)
    assert len(run.result.finetune.history) == 3 and recorder.stages["fine-tune"] == 3 * 18
    verdict = next(n for n in run.result.notes if n.startswith("fine-tuning did not beat the probe on validation"))
    assert "so the time went to probes of efficientnet_lite1, efficientnet_lite2" in verdict
    assert "ensemble kept" in verdict
    assert not any(n.startswith("kept the linear probe") for n in run.result.notes)  # said once, in the verdict
    assert run.result.stage == "probe" and run.result.model_config.backbone == ALL
    # The saved run is the ensemble: its answers on validation are the metrics'.
    assert run.metrics["valid"]["accuracy"] == pytest.approx(_saved_valid_accuracy(run, data))
    # The run's file pins what the clock decided: the ensemble, as probes, with no budget.
    saved, _ = _pins(run.path)
    assert (saved["backbone"], saved["mode"], saved["time_budget"]) == (ALL, "probe", None)


def test_fine_tuning_that_beats_the_probe_is_kept_without_partner_probes(data, tmp_path, monkeypatch):
    monkeypatch.setattr(planning, "plan_epochs", lambda cfg, n, step_s, eval_s: (3, 1.0))
    _fine_tuning_scores(monkeypatch, 2.0)  # above any accuracy the probe can have
    recorder = StageRecorder()
    run = vistrain.train(data, out=tmp_path / "run", cache_dir=tmp_path / "cache", image_size=SIZE,
                         time_budget=600, reporter=recorder)
    assert run.result.stage == "finetune" and run.result.model_config.backbone == BASE
    assert not any("probes of" in n for n in run.result.notes)
    # Lite0's on train and valid (the fine-tuned network answers the test images itself) and the
    # mirror check's on valid: no partner's.
    assert recorder.stages["features"] == 27 + 9


def test_a_losing_fine_tuning_without_a_budget_tries_no_partner(data, tmp_path, monkeypatch):
    """No budget, nothing left over to spend: the run is what was asked, Lite0 alone."""
    _fine_tuning_scores(monkeypatch, -1.0)
    monkeypatch.setattr(Probe, "beats", lambda self, other: True)
    run = vistrain.train(data, out=tmp_path / "run", cache_dir=tmp_path / "cache", image_size=SIZE,
                         time_budget=None, epochs=1)
    assert run.result.stage == "probe" and run.result.model_config.backbone == BASE
    assert any(n.startswith("kept the linear probe: fine-tuning reached") for n in run.result.notes)


def test_a_resumed_run_whose_fine_tuning_loses_ends_as_the_straight_run(data, tmp_path, monkeypatch):
    """The checkpoint keeps the probe's head, not its features: the resumed run rebuilds the probe
    (from the feature cache) to grow the same ensemble an uninterrupted run grows."""
    monkeypatch.setattr(planning, "plan_epochs", lambda cfg, n, step_s, eval_s: (3, 1.0))
    _fine_tuning_scores(monkeypatch, -1.0)
    monkeypatch.setattr(Probe, "beats", lambda self, other: True)
    opts = {"cache_dir": tmp_path / "cache", "image_size": SIZE, "time_budget": 600}
    first = vistrain.train(data, out=tmp_path / "run", reporter=InterruptAfterFirstEpoch(), **opts)
    assert first.result.finetune.interrupted and first.result.model_config.backbone == BASE
    resumed = vistrain.train(data, out=tmp_path / "run", resume=True, cache_dir=tmp_path / "cache")
    straight = vistrain.train(data, out=tmp_path / "straight", **opts)
    assert len(resumed.result.finetune.history) == 3
    for run in (resumed, straight):
        assert run.result.stage == "probe" and run.result.model_config.backbone == ALL
    assert resumed.metrics["valid"] == straight.metrics["valid"] and resumed.metrics["test"] == straight.metrics["test"]
    np.testing.assert_allclose(resumed.result.valid_logits, straight.result.valid_logits, atol=1e-5)


def test_partners_that_do_not_beat_the_probe_leave_the_single_probe(data, tmp_path, monkeypatch):
    monkeypatch.setattr(planning, "plan_epochs", lambda cfg, n, step_s, eval_s: (3, 1.0))
    _fine_tuning_scores(monkeypatch, -1.0)
    monkeypatch.setattr(Probe, "beats", lambda self, other: False)
    run = vistrain.train(data, out=tmp_path / "run", cache_dir=tmp_path / "cache", image_size=SIZE, time_budget=600)
    verdict = next(n for n in run.result.notes if n.startswith("fine-tuning did not beat the probe on validation"))
    assert verdict.endswith("single probe kept")
    assert run.result.stage == "probe" and run.result.model_config.backbone == BASE
    # What is saved is the probe: its validation answers are the ones the probe stage scored.
    assert run.metrics["valid"]["accuracy"] == pytest.approx(_saved_valid_accuracy(run, data))
    assert run.metrics["valid"]["accuracy"] == pytest.approx(run.result.probe_accuracy)

"""``train --config FILE.yaml``: settings from a file, typed flags win, unknown keys rejected, resolved file reproduces."""

from __future__ import annotations

import json

import pytest
import yaml

from vistrain.cli import build_parser, main
from vistrain.config_file import ConfigError, load_config, resolve_train_args
from vistrain.familiarity import FAMILIAR_FILE


def _resolve(argv):
    return resolve_train_args(build_parser().parse_args(["train", *argv]))


def test_unknown_key_is_rejected_with_a_suggestion(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("learning_rate: 0.001\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown setting 'learning_rate'"):
        load_config(f)
    f.write_text("backbon: efficientnet_lite2\n")
    with pytest.raises(ConfigError, match=r"did you mean 'backbone'\?"):
        load_config(f)
    f.write_text("augment: {jiter: 0.3}\n")
    with pytest.raises(ConfigError, match=r"unknown augment setting 'jiter' \(did you mean 'jitter'\?\)"):
        load_config(f)
    f.write_text("epochs: many\n")
    with pytest.raises(ConfigError, match="epochs must be a whole number"):
        load_config(f)
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(f)


def test_typed_flags_override_the_file_even_at_their_default_value(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data: photos\nresize: pad\nmode: probe\nepochs: 3\nlr: 1\ntime_budget: null\n"
                 "probe_c: 0.5\naugment: {jitter: 0.1, scale: [0.5, 1.0]}\n")
    args, extra = _resolve(["--config", str(f), "--resize", "crop", "--epochs", "5"])
    assert str(args.data) == "photos" and args.mode == "probe"
    assert args.resize == "crop" and args.epochs == 5  # typed: crop is the default, it still wins over the file
    assert args.lr == 1.0 and isinstance(args.lr, float) and args.no_time_budget is True
    assert args.batch_size == 32  # neither file nor flag: the default
    assert extra["probe_c"] == 0.5 and extra["augment"].scale == (0.5, 1.0) and extra["augment"].jitter == 0.1
    args, _ = _resolve(["other", "--config", str(f), "--time-budget", "60"])
    assert str(args.data) == "other" and args.time_budget == 60 and args.no_time_budget is False
    with pytest.raises(ConfigError, match="no dataset"):
        _resolve([])


def test_resume_reads_the_runs_own_settings_and_typed_flags_win(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.yaml").write_text("data: photos\nlr: 0.0003\nepochs: 5\ntime_budget: 1200\n")
    args, _ = _resolve(["photos", "--out", str(run), "--resume", "--epochs", "3"])
    assert args.lr == 0.0003 and args.time_budget == 1200  # from the interrupted run, not the defaults
    assert args.epochs == 3  # typed now: passed on, for vistrain.train to refuse (see test_resume_after_a_crash)
    args, _ = _resolve(["photos", "--out", str(run)])  # not resuming: the file is not read
    assert args.lr == 1e-4 and args.epochs == 8


def test_resolved_config_in_the_run_reproduces_it(class_folders, tmp_path, cache_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)  # DATA typed relative to here; the second run starts elsewhere
    cfg = tmp_path / "base.yaml"
    cfg.write_text(yaml.safe_dump({"mode": "probe", "image_size": 64, "time_budget": None, "seed": 4,
                                   "probe_c": 0.05, "resize": "squish", "familiarity": False}))
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train", class_folders.name, "--config", str(cfg), "--seed", "2", "--out", str(first),
                 "--cache-dir", str(cache_dir)]) == 0
    resolved = yaml.safe_load((first / "train_config.yaml").read_text())
    assert resolved["seed"] == 2 and resolved["probe_c"] == 0.05 and resolved["resize"] == "squish"
    assert resolved["data"] == str(class_folders.resolve()) and resolved["time_budget"] is None
    assert resolved["familiarity"] is False and not (first / FAMILIAR_FILE).exists()  # a config-file-only setting
    assert json.loads((first / "config.json").read_text())["preprocessing"]["resize"] == "squish"
    # The resolved file alone (no DATA argument) trains the same model on the same split, from any folder.
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["train", "--config", str(first / "train_config.yaml"), "--out", str(second),
                 "--cache-dir", str(cache_dir)]) == 0
    assert (first / "split.csv").read_text() == (second / "split.csv").read_text()
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (first, second))
    assert m1["valid"] == m2["valid"]
    assert m1["valid"]["note"] == "validation images were not used for fitting"  # C given, not chosen on them
    assert yaml.safe_load((second / "train_config.yaml").read_text()) == resolved
    assert not (second / FAMILIAR_FILE).exists()


def test_cli_reports_a_bad_config_file_and_exits_2(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text("shedule: constant\n")
    assert main(["train", str(tmp_path), "--config", str(f)]) == 2
    out = capsys.readouterr().out
    assert "unknown setting 'shedule'" in out and "did you mean 'schedule'" in out


def test_probe_c_auto_means_chosen_and_bad_values_are_named(tmp_path):
    from vistrain.config_file import normalise
    from vistrain.data.dataset import DataConfig
    from vistrain.training.trainer import TrainConfig, TrainError

    assert normalise({"probe_c": "auto"}, "f.yaml") == {"probe_c": None}
    assert normalise({"probe_c": 1}, "f.yaml") == {"probe_c": 1.0}
    for bad in ("strong", 0.0, -1.0):
        with pytest.raises(TrainError, match=f"positive number, or auto \\(got {bad!r}\\)"):
            TrainConfig(DataConfig(tmp_path), tmp_path / "run", probe_c=bad)
    with pytest.raises(TrainError, match=r"familiarity must be true or false \(got 'no'\)"):
        TrainConfig(DataConfig(tmp_path), tmp_path / "run", familiarity="no")  # YAML 1.1 would have read a bare no


def test_budget_decisions_pin_only_what_the_clock_decided(tmp_path):
    from vistrain.data.dataset import DataConfig
    from vistrain.training.finetune import FinetuneState
    from vistrain.training.planning import budget_decisions
    from vistrain.training.trainer import TrainConfig

    cfg = TrainConfig(data=DataConfig(tmp_path), out=tmp_path / "run", epochs=8, time_budget=600.0)
    ran = FinetuneState(planned_epochs=8)
    assert budget_decisions(cfg, ran, None) == ({"time_budget": None}, None)  # all 8 fit here; maybe not elsewhere
    assert budget_decisions(cfg, FinetuneState(planned_epochs=5), None) == ({"time_budget": None, "epochs": 5}, None)
    assert budget_decisions(cfg, FinetuneState(planned_epochs=0), None) == ({"time_budget": None, "mode": "probe"}, None)
    assert budget_decisions(cfg, None, None) == ({}, None)  # --mode probe or an ensemble: no clock involved
    unlimited = TrainConfig(data=DataConfig(tmp_path), out=tmp_path / "run", time_budget=None)
    assert budget_decisions(unlimited, FinetuneState(planned_epochs=8), None) == ({}, None)
    assert budget_decisions(cfg, FinetuneState(planned_epochs=5, interrupted=True), None) == ({}, None)
    # Cut short against its own plan: no setting repeats that, and the file says so.
    short = FinetuneState(planned_epochs=5, out_of_time=True)
    short.history = [object()] * 3
    pinned, caveat = budget_decisions(cfg, short, None)
    assert pinned == {"time_budget": None, "epochs": 5}
    assert caveat == "fine-tuning stopped at the time budget after epoch 3 of 5; without a budget all 5 run"


def test_saved_file_names_each_pinned_setting_and_the_caveat(tmp_path):
    from vistrain.config_file import save_config
    from vistrain.data.dataset import DataConfig
    from vistrain.training.trainer import TrainConfig

    cfg = TrainConfig(data=DataConfig(tmp_path), out=tmp_path / "run", epochs=8, time_budget=600.0)
    path = tmp_path / "train_config.yaml"
    save_config(cfg, path, {"time_budget": None, "epochs": 5}, "stopped early")
    text = path.read_text()
    assert "The 600 s time budget planned this run" in text and "epochs 8 -> 5, time_budget 600.0 -> null" in text
    assert "# Not repeatable: stopped early" in text
    saved = load_config(path)
    assert saved["epochs"] == 5 and saved["time_budget"] is None and saved["mode"] == "auto"
    save_config(cfg, path)  # nothing pinned: the request, with no such lines
    assert "time budget planned" not in path.read_text() and load_config(path)["time_budget"] == 600.0

"""``train --config FILE.yaml``: settings from a file, typed flags win, unknown keys rejected, resolved file reproduces."""

from __future__ import annotations

import json
from pathlib import Path

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
    with pytest.raises(ConfigError, match=r"c\.yaml: epochs: 'many' is not a whole number"):
        load_config(f)
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(f)


def test_typed_flags_override_the_file_even_at_their_default_value(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data: photos\nresize: pad\nmode: probe\nepochs: 3\nlabel_smoothing: 0\ntime_budget: null\n"
                 "probe_c: 0.5\naugment: {jitter: 0.1, scale: [0.5, 1.0]}\n")
    (tmp_path / "photos").mkdir()
    args, extra = _resolve(["--config", str(f), "--resize", "crop", "--epochs", "5"])
    assert args.data == tmp_path / "photos" and args.mode == "probe"  # beside the file, not the shell's folder
    assert args.resize == "crop" and args.epochs == 5  # typed: crop is the default, it still wins over the file
    assert args.label_smoothing == 0.0 and isinstance(args.label_smoothing, float) and args.no_time_budget is True
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


# Each reached a comparison or an unpacking in TrainConfig / AugmentConfig and crashed with a
# TypeError there (the audit's list), or was taken silently (a list or a flag as a path).
@pytest.mark.parametrize(("line", "message"), [
    ("lr: fast", r"lr: 'fast' is not a number \(expected a number between 0 and 1, or auto\)"),
    ('time_budget: "10"', r"time_budget: '10' is not a number \(expected .*seconds, or null for no limit, written without quotes\)"),
    ("label_smoothing: x", r"label_smoothing: 'x' is not a number"),
    ("max_memory: lots", r"max_memory: 'lots' is not a number \(expected .*gigabytes"),
    ("weight_decay: none", r"weight_decay: 'none' is not a number"),
    ('dropout: "0.1"', r"dropout: '0\.1' is not a number \(.*written without quotes\)"),
    ("probe_c: [0.1, 1]", r"probe_c: \[0\.1, 1\] is not a number \(expected a positive number, or auto\)"),
    ("valid_fraction: half", r"valid_fraction: 'half' is not a number"),
    ("backbone: null", r"backbone: null is not allowed \(expected a backbone name"),
    ("lr: null", r"lr: null is not allowed"),
    ("mode: 3", r"mode: 3 is not text \(expected auto, probe or finetune\)"),
    ("device: [cpu]", r"device: \['cpu'\] is not text"),
    ("label_from_name: 5", r"label_from_name: 5 is not text"),
    ("batch_size: 8.0", r"batch_size: 8\.0 is not a whole number"),
    ("seed: true", r"seed: true is not a whole number"),
    ("image_size: auto", r"image_size: 'auto' is not a whole number \(expected .*or null to choose from the photos\)"),
    ('familiarity: "no"', r"familiarity: 'no' is not a yes/no value \(.*written without quotes\)"),
    ("data: [a, b]", r"data: \['a', 'b'\] is not a path"),
    ("data: null", r"data: null is not allowed"),
    ("out: yes", r"out: true is not a path"),
    ("augment: 0.3", r"augment: 0\.3 is not a mapping"),
    ("augment: {scale: 0.3}", r"augment\.scale: 0\.3 is not a pair of numbers \(expected \[low, high\]"),
    ("augment: {ratio: [1, 2, 3]}", r"augment\.ratio: \[1, 2, 3\] is not a pair of numbers"),
    ("augment: {scale: [a, 1]}", r"augment\.scale: \['a', 1\] is not a pair of numbers"),
    ("augment: {flip: 1}", r"augment\.flip: 1 is not one of the choices \(expected true, false or auto\)"),
    ("augment: {jitter: strong}", r"augment\.jitter: 'strong' is not a number"),
    ("augment: {scale: [0.5, 0.1]}", r"augment: augmentation scale \(0\.5, 0\.1\) must satisfy"),  # a range: AugmentConfig's
])
def test_a_value_of_the_wrong_type_is_named_with_file_key_and_what_fits(tmp_path, line, message):
    f = tmp_path / "c.yaml"
    f.write_text(line + "\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: " + message):
        load_config(f)


def test_the_cli_reports_a_wrong_type_without_a_traceback(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("lr: fast\n")
    assert main(["train", str(tmp_path), "--config", str(f), "--out", str(tmp_path / "run")]) == 2
    assert "c.yaml: lr: 'fast' is not a number" in " ".join(capsys.readouterr().out.split())  # rich wraps lines


def test_valid_values_keep_their_meaning(tmp_path):
    from vistrain.config_file import normalise
    from vistrain.data.augment import AugmentConfig

    got = normalise({"lr": 1, "time_budget": None, "max_memory": 2, "epochs": 3, "image_size": None,
                     "ensemble": False, "familiarity": False, "data": "~/photos", "cache_dir": None,
                     "augment": {"scale": [0.5, 1], "flip": "auto"}}, "f.yaml")
    assert got["lr"] == 1.0 and isinstance(got["lr"], float) and isinstance(got["max_memory"], float)
    assert got["time_budget"] is None and got["image_size"] is None and got["cache_dir"] is None
    assert got["ensemble"] == "off" and got["familiarity"] is False and type(got["epochs"]) is int
    assert got["data"] == Path("~/photos").expanduser()
    assert got["augment"] == AugmentConfig(scale=(0.5, 1.0), flip="auto")
    assert normalise({"lr": "auto"}, "f.yaml") == {"lr": "auto"}  # the range test runs first
    keep = AugmentConfig(jitter=0.1)
    assert normalise({"augment": keep}, "f.yaml")["augment"] is keep  # the sweep passes built ones


def test_exponents_without_a_dot_are_numbers(tmp_path):
    # PyYAML (YAML 1.1) reads `1e-4` as text; refusing the usual spelling of a learning rate as
    # "not a number" would be our error, not the user's.
    f = tmp_path / "c.yaml"
    f.write_text("lr: 3e-4\ntime_budget: 1E3\nlabel_from_name: \"1e5\"\n")
    got = load_config(f)
    assert got["lr"] == 3e-4 and got["time_budget"] == 1000.0 and got["label_from_name"] == "1e5"
    assert yaml.safe_load("lr: 3e-4\n") == {"lr": "3e-4"}  # PyYAML's own loader is left as it was


def test_relative_paths_in_a_file_are_relative_to_its_folder(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    f = tmp_path / "cfg" / "c.yaml"
    f.write_text(f"data: ../photos\nout: runs/a\ncache_dir: {tmp_path / 'cache'}\n")
    monkeypatch.chdir(tmp_path)  # from the parent, ../photos must not mean a sibling of tmp_path
    got = load_config("cfg/c.yaml")
    assert got["data"].resolve() == (tmp_path / "photos").resolve()
    assert got["out"].resolve() == (tmp_path / "cfg" / "runs" / "a").resolve()
    assert got["cache_dir"] == tmp_path / "cache"  # absolute: as written
    (tmp_path / "photos").mkdir()
    args, _ = _resolve(["--config", "cfg/c.yaml"])
    assert args.data.resolve() == (tmp_path / "photos").resolve()
    assert args.cache_dir == tmp_path / "cache"
    args, _ = _resolve(["photos", "--config", "cfg/c.yaml", "--out", "here"])  # typed: relative to the shell's folder
    assert args.data == Path("photos") and args.out == Path("here")


def test_a_missing_data_folder_from_a_file_names_the_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "c.yaml").write_text("data: ../nothing\nmode: probe\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"cfg/c\.yaml: data: cfg/\.\./nothing: no such file or folder \(a relative "
                                          r"path in a config file is relative to the file's folder\)"):
        _resolve(["--config", "cfg/c.yaml"])
    assert main(["train", "--config", "cfg/c.yaml", "--out", "run"]) == 2
    assert "cfg/c.yaml: data:" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()


def test_resume_with_a_config_file_starts_from_the_runs_settings(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / "train_config.yaml").write_text(
        f"data: {tmp_path}\nmode: finetune\nepochs: 20\npatience: 50\nlr: 0.0003\ntime_budget: null\n"
        "augment: {jitter: 0.1}\n")
    pat = tmp_path / "pat.yaml"
    pat.write_text("patience: 1\nepochs: 12\n")
    args, extra = _resolve(["--out", str(run), "--resume", "--config", str(pat), "--epochs", "20"])
    assert args.mode == "finetune" and args.lr == 0.0003 and args.no_time_budget is True  # the run's, not defaults
    assert args.patience == 1  # the file over the run's settings
    assert args.epochs == 20  # typed over both
    assert args.data == tmp_path and extra["augment"].jitter == 0.1
    # `resume: true` and `out:` in the file itself find the run the same way.
    (tmp_path / "r.yaml").write_text("resume: true\nout: run\npatience: 2\n")
    args, _ = _resolve(["--config", str(tmp_path / "r.yaml")])
    assert args.resume is True and args.mode == "finetune" and args.patience == 2 and args.epochs == 20
    # Not resuming: the run's settings are not read.
    args, _ = _resolve([str(tmp_path), "--out", str(run), "--config", str(pat)])
    assert args.mode == "auto" and args.epochs == 12 and args.patience == 1


# The right type but outside what TrainConfig (or the split) accepts: TrainConfig's own message, with
# the file it came from in front, as for a value of the wrong type.
@pytest.mark.parametrize(("line", "message"), [
    ("lr: 5", r"lr: learning rate 5\.0 must be between 0 and 1"),
    ("epochs: -1", r"epochs: epochs must be at least 1 \(got -1\)"),
    ("valid_fraction: 1.5", r"valid_fraction: validation fraction 1\.5 must be between 0 and 1"),
    ("time_budget: -10", r"time_budget: time budget must be positive seconds \(got -10\.0\)"),
    ("image_size: 16", r"image_size: image size 16 is outside 32\.\.1024 pixels"),
    ("probe_c: 0", r"probe_c: probe regularisation C must be a positive number, or auto \(got 0\.0\)"),
    ("dropout: 1", r"dropout: dropout 1\.0 must be within \[0, 1\)"),
    ("backbone: resnet9000", r"backbone: .*resnet9000"),
])
def test_a_value_out_of_range_names_the_config_file(tmp_path, line, message):
    f = tmp_path / "runs.yaml"
    f.write_text(line + "\n")
    with pytest.raises(ConfigError, match=r"runs\.yaml: " + message):
        _resolve([str(tmp_path), "--config", str(f), "--out", str(tmp_path / "run")])


def test_an_out_of_range_value_is_blamed_on_where_it_came_from(tmp_path, capsys):
    f = tmp_path / "runs.yaml"
    f.write_text("epochs: -1\nlr: 5\n")
    run = ["train", str(tmp_path), "--config", str(f), "--out", str(tmp_path / "run")]
    assert main(run) == 2
    said = " ".join(capsys.readouterr().out.split())  # rich wraps lines
    assert "runs.yaml: epochs: epochs must be at least 1 (got -1)" in said
    # Typed flags override the file's values: then the file's are not the ones used, nor checked.
    args, _ = _resolve(run[1:] + ["--epochs", "2", "--lr", "0.001"])
    assert args.epochs == 2 and args.lr == 0.001
    f.write_text("time_budget: -10\n")
    assert _resolve(run[1:] + ["--no-time-budget"])[0].no_time_budget is True
    f.write_text("epochs: -1\nlr: 5\n")
    # A typed value out of range is the flag's: TrainConfig's message alone, not blaming the file.
    f.write_text("lr: 0.001\n")
    assert main(run + ["--lr", "5"]) == 2
    said = " ".join(capsys.readouterr().out.split())
    assert "learning rate 5.0 must be between 0 and 1" in said and "runs.yaml" not in said
    # So is one from the interrupted run's own settings, named by that file (the run's, on --resume).
    saved = tmp_path / "run" / "checkpoint" / "train_config.yaml"
    saved.parent.mkdir(parents=True)
    saved.write_text(f"data: {tmp_path}\npatience: 0\n")
    with pytest.raises(ConfigError, match=r"checkpoint/train_config\.yaml: patience: patience must be at least 1"):
        _resolve(["--out", str(tmp_path / "run"), "--resume"])

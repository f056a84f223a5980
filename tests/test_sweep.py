"""``vistrain sweep`` on Optuna: SQLite by default, a real PostgreSQL server shared by two workers."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import write_class_folders

from vistrain.cli import main
from vistrain.config_file import ConfigError, load_config
from vistrain.familiarity import FAMILIAR_FILE
from vistrain.sweep.space import grid, load_space

SPACE = {"mode": "probe", "image_size": 64, "time_budget": None,
         "probe_c": {"low": 0.001, "high": 1.0, "log": True}, "resize": ["crop", "squish"]}


@pytest.fixture
def sweep_data(tmp_path):
    return write_class_folders(tmp_path / "photos", per_class=8)


def _space(tmp_path, space=SPACE) -> Path:
    f = tmp_path / "space.yaml"
    f.write_text(yaml.safe_dump(space))
    return f


def _valid_accuracy(run_dir: Path) -> float:
    return json.loads((run_dir / "metrics.json").read_text())["valid"]["accuracy"]


def test_space_file_errors_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match=r"'label_smothing' cannot be swept \(did you mean 'label_smoothing'\?\)"):
        load_space(_space(tmp_path, {"label_smothing": {"low": 0.0, "high": 0.2}}))
    with pytest.raises(ConfigError, match="lr: range ends must be numbers with low < high"):
        load_space(_space(tmp_path, {"lr": {"low": 1e-3, "high": 1e-4}}))
    with pytest.raises(ConfigError, match="nothing to search"):
        load_space(_space(tmp_path, {"mode": "probe"}))
    space = load_space(_space(tmp_path, {"epochs": {"low": 1, "high": 4}, "augment.jitter": {"low": 0.0, "high": 0.4},
                                         "backbone": ["efficientnet_lite0", "efficientnet_lite2"]}))
    assert [space[k].kind for k in ("epochs", "augment.jitter", "backbone")] == ["int", "float", "choice"]
    with pytest.raises(ConfigError, match="augment.jitter: the grid sampler needs choices or a range with a step"):
        grid(space)
    space = load_space(_space(tmp_path, {"epochs": {"low": 1, "high": 3}, "dropout": {"low": 0.0, "high": 0.2, "step": 0.1},
                                         "resize": ["crop", "pad"], "mode": "finetune"}))
    assert grid(space) == {"epochs": [1, 2, 3], "dropout": [0.0, 0.1, 0.2], "resize": ["crop", "pad"]}


def test_sqlite_sweep_writes_table_plots_and_a_reproducible_best_yaml(sweep_data, tmp_path, cache_dir, browser):
    out = tmp_path / "sweep"
    assert main(["sweep", str(sweep_data), "--space", str(_space(tmp_path)), "--trials", "4", "--sampler", "random",
                 "--out", str(out), "--cache-dir", str(cache_dir)]) == 0
    study = optuna.load_study(study_name="space", storage=f"sqlite:///{out / 'study.db'}")
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({round(t.params["probe_c"], 9) for t in trials}) == 4  # the sampler explored
    for t in trials:  # each trial is an ordinary run whose validation accuracy is the trial's value
        assert t.value == pytest.approx(_valid_accuracy(Path(t.user_attrs["run_dir"])))
        # ... without the familiarity check: a trial ships nothing, so it skips that pass
        assert not (Path(t.user_attrs["run_dir"]) / FAMILIAR_FILE).exists()
    with (out / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["trial"]) for r in rows] == [0, 1, 2, 3] and {"probe_c", "resize", "value"} <= set(rows[0])

    best = load_config(out / "best.yaml")  # a valid --config file
    assert best["probe_c"] == pytest.approx(study.best_params["probe_c"]) and best["mode"] == "probe"
    assert "familiarity" not in best
    assert main(["train", "--config", str(out / "best.yaml"), "--out", str(tmp_path / "again"),
                 "--cache-dir", str(cache_dir)]) == 0
    assert _valid_accuracy(tmp_path / "again") == pytest.approx(study.best_value)
    assert (tmp_path / "again" / FAMILIAR_FILE).is_file()  # the model to ship has the check

    page = browser.new_page()
    page.goto((out / "sweep.html").as_uri())
    assert page.locator("#trials tbody tr").count() == 4
    widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
    assert len(widths) == 2 and all(w > 200 for w in widths)  # importance + parallel coordinates drawn
    page.close()


PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1 (Debian's postgresql), trust auth, removed afterwards."""
    if not PG_BIN:
        pytest.skip("PostgreSQL server binaries missing: run scripts/system-deps.sh (apt-get install postgresql)")
    bin_dir = PG_BIN[-1]
    # Not under pytest's temp root: pytest keeps that private (0700), and the server runs as another user.
    base = Path(tempfile.mkdtemp(prefix="vistrain-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as the postgres user")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres")
    data, port = base / "data", _free_port()
    init = subprocess.run(as_user + [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                          capture_output=True, text=True, check=False)
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"initdb failed, PostgreSQL cannot start here: {init.stderr.strip()[-300:]}")
    start = subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w",
                                      "-o", f"-h 127.0.0.1 -p {port} -k {base}", "start"],
                           capture_output=True, text=True, check=False)
    if start.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {start.stderr.strip()[-300:]}")
    try:
        subprocess.run(as_user + [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                  "vistrain"], check=True, capture_output=True)
        yield f"postgresql://postgres@127.0.0.1:{port}/vistrain"
    finally:
        subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True,
                       check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_two_workers_share_one_postgres_study(sweep_data, tmp_path, cache_dir, postgres):
    space, n = _space(tmp_path), 6
    env = {**os.environ, "VISTRAIN_CACHE_DIR": str(cache_dir)}
    workers = [subprocess.Popen([sys.executable, "-m", "vistrain", "sweep", str(sweep_data), "--space", str(space),
                                 "--trials", str(n), "--storage", postgres, "--study", "shared", "--pruner", "none",
                                 "--out", str(tmp_path / f"w{i}")], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
               for i in range(2)]
    t0 = time.time()
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), logs
    study = optuna.load_study(study_name="shared", storage=postgres.replace("postgresql://", "postgresql+pg8000://"))
    trials = [t for t in study.get_trials() if not t.user_attrs.get("surplus")]
    # Every trial recorded exactly once: numbers 0..n-1, all finished, each run by exactly one worker.
    assert sorted(t.number for t in trials) == list(range(n))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    dirs = [sorted(p.name for p in (tmp_path / f"w{i}" / "trials").glob("*")) for i in range(2)]
    assert sorted(dirs[0] + dirs[1]) == [f"{k:04d}" for k in range(n)]
    assert dirs[0] and dirs[1], f"both workers should have taken trials ({time.time() - t0:.0f} s): {dirs}"
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    # The best trial reproduces through train --config best.yaml.
    assert main(["train", "--config", str(tmp_path / "w0" / "best.yaml"), "--out", str(tmp_path / "again"),
                 "--cache-dir", str(cache_dir)]) == 0
    assert _valid_accuracy(tmp_path / "again") == pytest.approx(study.best_value)


def test_best_yaml_pins_what_the_best_trials_time_budget_decided(tmp_path):
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from vistrain.sweep.report import write_outputs
    from vistrain.sweep.runner import SweepConfig

    space = load_space(_space(tmp_path, {"lr": {"low": 1e-5, "high": 1e-3, "log": True}}))
    cfg = SweepConfig(tmp_path / "photos", space, 2, tmp_path / "sweep", base={"time_budget": 600.0})
    cfg.out.mkdir()
    study = optuna.create_study(direction="maximize")
    lr = FloatDistribution(1e-5, 1e-3, log=True)
    study.add_trial(create_trial(params={"lr": 1e-4}, distributions={"lr": lr}, value=0.8))
    # The best trial planned 3 of 8 epochs in its budget (two workers on two cores): best.yaml repeats that.
    study.add_trial(create_trial(params={"lr": 3e-4}, distributions={"lr": lr}, value=0.9,
                                 user_attrs={"pinned": {"time_budget": None, "epochs": 3}}))
    text = write_outputs(study, cfg)["best"].read_text()
    best = load_config(cfg.out / "best.yaml")
    assert best["lr"] == pytest.approx(3e-4) and best["epochs"] == 3 and best["time_budget"] is None
    assert "# Pinned as the trial's time budget decided: time_budget: null, epochs: 3" in text


@pytest.mark.parametrize("missing, storage", [("optuna", None), ("pg8000", "postgresql://me@127.0.0.1:5432/db")])
def test_a_missing_sweep_dependency_is_refused_before_any_trial(tmp_path, monkeypatch, missing, storage):
    import importlib.util

    from vistrain.sweep.runner import SweepConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a))
    with pytest.raises(ConfigError, match=rf"needs .*{'Optuna' if missing == 'optuna' else 'pg8000'}.*\.\[sweep\]"):
        SweepConfig(data=tmp_path, space={}, trials=2, out=tmp_path / "sweep", storage=storage)
    monkeypatch.undo()
    SweepConfig(data=tmp_path, space={}, trials=2, out=tmp_path / "sweep", storage=storage)  # installed: accepted


class _InterruptAt:
    """A reporter that presses Ctrl-C (raises KeyboardInterrupt) when the sweep logs a given line."""

    def __init__(self, prefix: str):
        self.prefix, self.lines = prefix, []

    def stage(self, name, total, unit="img"):
        from vistrain.progress import SilentReporter

        return SilentReporter().stage(name, total, unit)

    def log(self, message: str) -> None:
        self.lines.append(message)
        if message.startswith(self.prefix):
            raise KeyboardInterrupt


def _sweep_args(*argv):
    from vistrain.cli import build_parser

    return build_parser().parse_args(["sweep", *map(str, argv)])


def _csv_rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_ctrl_c_mid_sweep_writes_the_summary_and_a_rerun_does_not_count_the_interrupted_trial(
        sweep_data, tmp_path, cache_dir, capsys):
    from rich.console import Console

    from vistrain.commands import sweep as sweep_command

    out, space = tmp_path / "sweep", _space(tmp_path)
    argv = [sweep_data, "--space", space, "--trials", 3, "--sampler", "random", "--out", out, "--cache-dir", cache_dir]
    console = Console(width=200)
    rc = sweep_command.run(_sweep_args(*argv), console, _InterruptAt("trial 1:"))
    said = capsys.readouterr().out
    assert rc == 130
    assert "interrupted after 1 of 3 trial(s); run the same command to continue" in said
    assert "Traceback" not in said
    assert [(r["trial"], r["state"], r["error"]) for r in _csv_rows(out / "trials.csv")] == [
        ("0", "complete", ""), ("1", "interrupted", "interrupted (Ctrl-C)")]
    assert load_config(out / "best.yaml")["mode"] == "probe"  # from the trial that finished
    assert "1 complete, 0 pruned, 0 failed, 1 interrupted" in said

    assert main(["sweep", *map(str, argv)]) == 0  # the same command continues the study
    study = optuna.load_study(study_name="space", storage=f"sqlite:///{out / 'study.db'}")
    states = {t.number: t.state.name for t in study.get_trials()}
    # Three trials counted, as asked: the interrupted one gave its place back.
    assert states == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE", 3: "COMPLETE"}
    assert [r["state"] for r in _csv_rows(out / "trials.csv")] == ["complete", "interrupted", "complete", "complete"]
    assert main(["sweep", *map(str, argv)]) == 0  # full: a third run adds nothing
    assert len(optuna.load_study(study_name="space", storage=f"sqlite:///{out / 'study.db'}").trials) == 4


def test_ctrl_c_while_a_trial_fine_tunes_is_not_recorded_as_a_finished_trial(sweep_data, tmp_path, cache_dir):
    import signal

    from vistrain.training.checkpoint import CHECKPOINT_DIR

    out = tmp_path / "sweep"
    space = _space(tmp_path, {"mode": "finetune", "image_size": 64, "time_budget": None, "epochs": 30,
                              "patience": 30, "lr": {"low": 1e-4, "high": 1e-3, "log": True}})
    proc = subprocess.Popen([sys.executable, "-m", "vistrain", "sweep", str(sweep_data), "--space", str(space),
                             "--trials", "2", "--pruner", "none", "--out", str(out), "--cache-dir", str(cache_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Saved after each finished epoch: from then on Ctrl-C lands inside fine-tuning, which keeps the
        # best so far and returns normally.
        deadline = time.time() + 300
        while not (out / "trials" / "0000" / CHECKPOINT_DIR / "state.json").exists() and proc.poll() is None:
            assert time.time() < deadline, "the first fine-tuning epoch never finished"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        log = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, log
    assert "Traceback" not in log
    assert "interrupted after 0 of 2 trial(s)" in log
    assert [(r["state"], r["value"]) for r in _csv_rows(out / "trials.csv")] == [("interrupted", "")]
    assert not (out / "best.yaml").exists()  # nothing finished: nothing to recommend
    assert not (out / "trials" / "0001").exists()  # the sweep stopped


@pytest.mark.parametrize("key, spec, message", [
    ("label_from_name", ["(.+?)_", "(.+)-"], "label_from_name: the labels are the data"),
    ("label_from_name", "(.+?)_", "label_from_name: the labels are the data"),
    ("valid_fraction", [0.2, 0.5], "valid_fraction draws the train/valid split, so trials would be scored on"),
    ("seed", {"low": 0, "high": 3}, "seed draws the train/valid split"),
    ("augment.scale", {"low": 0.2, "high": 0.5}, r"augment.scale: a \(low, high\) pair"),
    ("augment.jitter", {"low": 0, "high": 2}, r"augment.jitter = 2: .*jitter"),
    ("augment.flip", ["auto", "sometimes"], "augment.flip = 'sometimes': .*'sometimes'"),
    ("epochs", {"low": 1.0, "high": 4.0}, r"epochs = 1.0: .*whole number"),
])
def test_space_settings_no_trial_could_use_are_refused_up_front(tmp_path, key, spec, message):
    with pytest.raises(ConfigError, match=message):
        load_space(_space(tmp_path, {"mode": "probe", key: spec}))


def test_fine_tuning_settings_are_refused_when_every_trial_only_probes(tmp_path, sweep_data):
    from vistrain.sweep.runner import SweepConfig

    def config(space, base=None):
        return SweepConfig(sweep_data, load_space(_space(tmp_path, space)), 2, tmp_path / "sweep", base=base or {})

    with pytest.raises(ConfigError, match=r"augment.jitter, lr: fine-tuning setting\(s\) swept while every trial "
                                          r"only probes"):
        config({"mode": "probe", "probe_c": [0.1, 1.0], "lr": [1e-4, 3e-4], "augment.jitter": [0.0, 0.2]})
    with pytest.raises(ConfigError, match="dropout: fine-tuning setting"):  # probe mode from the --config file
        config({"dropout": [0.0, 0.2]}, {"mode": "probe"})
    config({"mode": ["probe", "finetune"], "lr": [1e-4, 3e-4]})  # some trials fine-tune: lr matters to them
    config({"mode": "probe", "probe_c": [0.1, 1.0], "epochs": 3})  # fixed, not searched: harmless


def test_readme_example_space_is_accepted(tmp_path, sweep_data):
    from vistrain.sweep.runner import SweepConfig

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    example = readme.split("# space.yaml:", 1)[1].split("```", 1)[0]
    f = tmp_path / "readme_space.yaml"
    f.write_text(example.split("\n", 1)[1])
    SweepConfig(sweep_data, load_space(f), 2, tmp_path / "sweep")


def test_a_changed_space_is_refused_for_an_existing_study_and_a_fixed_valid_fraction_applies(
        sweep_data, tmp_path, cache_dir, capsys):
    out = tmp_path / "sweep"
    space = {**SPACE, "valid_fraction": 0.5}
    argv = ["sweep", str(sweep_data), "--space", str(_space(tmp_path, space)), "--trials", "1", "--out", str(out),
            "--cache-dir", str(cache_dir)]
    assert main(argv) == 0
    split = _csv_rows(out / "trials" / "0000" / "split.csv")
    assert sum(r["split"] == "valid" for r in split) == len(split) // 2  # the space's fraction, not the default
    assert load_config(out / "best.yaml")["valid_fraction"] == 0.5  # and best.yaml repeats what was scored
    capsys.readouterr()
    _space(tmp_path, {**space, "resize": ["crop", "pad"]})
    assert main([*argv[:-5], "2", *argv[-4:]]) == 2
    said = capsys.readouterr().out
    assert "study 'space'" in said and "another search space (differs in: resize)" in said and "--study NEW" in said
    assert len(optuna.load_study(study_name="space", storage=f"sqlite:///{out / 'study.db'}").trials) == 1


def test_a_failing_trial_says_why_in_one_line_and_the_sweep_goes_on(sweep_data, tmp_path, cache_dir, capsys):
    out = tmp_path / "sweep"
    # Each value works in some trial (a value no trial could use is refused up front); the pair does not:
    # an ensemble only probes.
    space = {**SPACE, "probe_c": 1.0, "resize": "crop", "mode": ["probe", "finetune"],
             "backbone": ["efficientnet_lite0+efficientnet_lite1"]}
    assert main(["sweep", str(sweep_data), "--space", str(_space(tmp_path, space)), "--trials", "2", "--sampler",
                 "grid", "--out", str(out), "--cache-dir", str(cache_dir)]) == 0
    captured = capsys.readouterr()
    said = captured.out + captured.err
    assert "Traceback" not in said and "failed with parameters" not in said  # Optuna's own warning, silenced
    assert "1 complete, 0 pruned, 1 failed" in said
    failed = [r for r in _csv_rows(out / "trials.csv") if r["state"] == "fail"]
    assert len(failed) == 1 and failed[0]["mode"] == "finetune" and "is an ensemble" in failed[0]["error"]
    assert f"trial {failed[0]['trial']} failed: " in said


def test_best_yaml_says_when_trials_tie_and_names_itself_by_an_absolute_path(tmp_path, monkeypatch):
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from vistrain.sweep.report import best_line, write_outputs
    from vistrain.sweep.runner import SweepConfig

    space = load_space(_space(tmp_path, {"lr": {"low": 1e-5, "high": 1e-3, "log": True}}))
    monkeypatch.chdir(tmp_path)
    cfg = SweepConfig(Path("photos"), space, 3, Path("sweep"))
    cfg.out.mkdir()
    study = optuna.create_study(direction="maximize")
    lr = FloatDistribution(1e-5, 1e-3, log=True)
    for value, x in ((1.0, 1e-4), (1.0, 3e-4), (0.5, 1e-3)):
        study.add_trial(create_trial(params={"lr": x}, distributions={"lr": lr}, value=value))
    head = write_outputs(study, cfg)["best"].read_text()
    assert "trial 0, validation accuracy 1.0000 (tied with trial(s) 1)" in head
    assert f"# Reproduce: vistrain train --config {tmp_path / 'sweep' / 'best.yaml'} --out runs/best" in head
    assert "tied with 1 other trial(s): 1" in best_line(study, "accuracy")
    study.add_trial(create_trial(params={"lr": 2e-4}, distributions={"lr": lr}, value=1.5))
    assert "tied" not in best_line(study, "accuracy")


@pytest.mark.parametrize("spot", ["sampler", "objective"])
def test_ctrl_c_just_after_optuna_creates_a_trial_leaves_no_running_trial_of_ours(
        sweep_data, tmp_path, cache_dir, capsys, monkeypatch, spot):
    from rich.console import Console

    from vistrain.commands import sweep as sweep_command
    from vistrain.progress import SilentReporter

    out, space = tmp_path / "sweep", _space(tmp_path)
    url = f"sqlite:///{out / 'study.db'}"
    out.mkdir()
    # A live worker elsewhere, mid-trial: its RUNNING trial holds one of the 3 places throughout.
    elsewhere = optuna.create_study(study_name="space", storage=url, direction="maximize").ask()
    elsewhere.set_user_attr("worker", "elsewhere:1")
    if spot == "sampler":  # inside study.ask(): the trial's row exists, RUNNING, before our objective starts
        real_hook = optuna.samplers.RandomSampler.before_trial

        def before_trial(self, study, trial):
            if trial.number == 2:
                raise KeyboardInterrupt
            return real_hook(self, study, trial)

        monkeypatch.setattr(optuna.samplers.RandomSampler, "before_trial", before_trial)
    else:  # the objective's first steps, the trial's own attributes
        real_set = optuna.trial.Trial.set_user_attr

        def set_user_attr(self, key, value):
            if key == "run_dir" and self.number == 2:
                raise KeyboardInterrupt
            return real_set(self, key, value)

        monkeypatch.setattr(optuna.trial.Trial, "set_user_attr", set_user_attr)
    argv = [sweep_data, "--space", space, "--trials", 3, "--sampler", "random", "--out", out, "--cache-dir", cache_dir]
    assert sweep_command.run(_sweep_args(*argv), Console(width=200), SilentReporter()) == 130
    assert "interrupted after 1 of 3 trial(s)" in capsys.readouterr().out
    monkeypatch.undo()

    trials = optuna.load_study(study_name="space", storage=url).get_trials()
    assert [(t.number, t.state.name) for t in trials] == [(0, "RUNNING"), (1, "COMPLETE"), (2, "FAIL")]
    assert trials[2].user_attrs["interrupted"] is True  # given back: not one of the 3
    assert trials[0].user_attrs == {"worker": "elsewhere:1"}  # the other worker's trial is left alone

    # At once, well inside the heartbeat's grace period: the same command runs the one trial still missing.
    assert main(["sweep", *map(str, argv)]) == 0
    states = {t.number: t.state.name for t in optuna.load_study(study_name="space", storage=url).get_trials()}
    assert states == {0: "RUNNING", 1: "COMPLETE", 2: "FAIL", 3: "COMPLETE"}


def test_values_no_trial_could_train_with_are_all_refused_before_the_study_starts(
        sweep_data, tmp_path, cache_dir, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per value, unwrapped
    out = tmp_path / "sweep"
    space = _space(tmp_path, {**SPACE, "mode": ["probe", "bogus"], "resize": ["crop", "sideways"],
                              "backbone": ["efficientnet_lite0", "nope"], "image_size": {"low": 16, "high": 64},
                              "time_budget": -5})
    assert main(["sweep", str(sweep_data), "--space", str(space), "--trials", "2", "--out", str(out),
                 "--cache-dir", str(cache_dir)]) == 2
    said = capsys.readouterr().out
    assert f"{space}: 5 value(s) that every trial drawing them would fail on" in said
    for line in ("mode: 'bogus': mode 'bogus' is not one of auto, probe, finetune",
                 "resize: 'sideways': resize method 'sideways' is not one of crop, pad, squish",
                 "backbone: 'nope': unknown backbone 'nope'; choose one of: efficientnet_lite0",
                 "image_size: 16 (the range's low end): image size 16 is outside 32..1024 pixels",
                 "time_budget: -5: time budget must be positive seconds (got -5.0)"):
        assert line in said
    assert not (out / "study.db").exists() and not (out / "trials.csv").exists()  # no trial, no study


def test_value_checks_refuse_what_fails_every_trial_not_combinations_some_trials_avoid(tmp_path, sweep_data):
    from vistrain.sweep.runner import SweepConfig

    pair = "efficientnet_lite0+efficientnet_lite1"
    shown = re.escape(f"'{pair}'")

    def config(space, base=None):
        f = _space(tmp_path, space)
        return SweepConfig(sweep_data, load_space(f), 2, tmp_path / "sweep", base=base or {}, space_file=f)

    # Only the trials pairing the ensemble with fine-tuning fail: each value alone has trials that work.
    config({"mode": ["probe", "finetune"], "backbone": ["efficientnet_lite0", pair]})
    # With fine-tuning fixed, in the space or in --config, every trial drawing the ensemble fails.
    with pytest.raises(ConfigError, match=rf"backbone: {shown}: backbone {shown} is an ensemble"):
        config({"mode": "finetune", "backbone": ["efficientnet_lite0", pair]})
    with pytest.raises(ConfigError, match=rf"mode: 'finetune': backbone {shown} is an ensemble"):
        config({"mode": ["probe", "finetune"], "probe_c": [0.1, 1.0]}, {"backbone": pair})
    # A setting the space sweeps takes its trials' values, not the --config file's.
    config({"backbone": ["efficientnet_lite0", pair], "probe_c": [0.1, 1.0]}, {"backbone": "nope", "mode": "probe"})
    with pytest.raises(ConfigError, match=r"lr: 1\.0 \(the range's high end\): learning rate 1\.0 must be between"):
        config({"mode": "finetune", "lr": {"low": 1e-4, "high": 1.0, "log": True}})
    with pytest.raises(ConfigError, match="valid_fraction: 1.5: validation fraction 1.5 must be between 0 and 1"):
        config({"mode": "probe", "probe_c": [0.1, 1.0], "valid_fraction": 1.5})
    with pytest.raises(ConfigError, match=r"every trial would fail on the settings they share \(--config\): "
                                          r"resize method 'sideways'"):
        config({"mode": "probe", "probe_c": [0.1, 1.0]}, {"resize": "sideways"})


def test_a_space_the_grid_sampler_cannot_walk_is_refused_before_the_study_is_made(tmp_path, sweep_data):
    from vistrain.sweep.runner import SweepConfig

    space = load_space(_space(tmp_path, {"mode": "probe", "probe_c": {"low": 0.1, "high": 1.0}}))
    with pytest.raises(ConfigError, match="probe_c: the grid sampler needs choices or a range with a step"):
        SweepConfig(sweep_data, space, 2, tmp_path / "sweep", sampler="grid")
    assert not (tmp_path / "sweep").exists()


def test_a_config_file_saying_resume_does_not_make_every_trial_resume(sweep_data, tmp_path, cache_dir):
    """A run's train_config.yaml may carry ``resume: true`` (written by a resumed run, or by hand):
    as a sweep's --config, each trial is still a new run, not a resume of a run that is not there."""
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump({"resume": True, "mode": "probe"}))
    out = tmp_path / "sweep"
    space = {k: v for k, v in SPACE.items() if k != "mode"}
    assert main(["sweep", str(sweep_data), "--space", str(_space(tmp_path, space)), "--trials", "1",
                 "--config", str(config), "--out", str(out), "--cache-dir", str(cache_dir)]) == 0
    rows = _csv_rows(out / "trials.csv")
    assert [r["state"] for r in rows] == ["complete"], rows

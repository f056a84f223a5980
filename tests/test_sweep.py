"""``vistrain sweep`` on Optuna: SQLite by default, a real PostgreSQL server shared by two workers."""

from __future__ import annotations

import csv
import json
import os
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

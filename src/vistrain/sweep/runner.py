"""Run a sweep: each trial is an ordinary training run in ``OUT/trials/NNNN``; Optuna chooses the settings.

The study lives in a database: a SQLite file in the sweep folder by default (nothing to start), or a
shared PostgreSQL server, where any number of ``vistrain sweep`` workers on any machines pull trials
from the same study until it holds ``--trials`` of them. Trials share the scan and feature caches,
so probe-only trials take seconds after the first.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from vistrain.config_file import ConfigError
from vistrain.extras import EXTRA_HINT
from vistrain.progress import Reporter, SilentReporter
from vistrain.sweep.space import Param, grid, suggest, to_options

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "halving", "none")
METRICS = ("accuracy", "macro_f1")


@dataclass
class SweepConfig:
    data: Path
    space: dict[str, Param]
    trials: int
    out: Path
    storage: str | None = None  # None: sqlite file OUT/study.db
    sampler: str = "tpe"
    pruner: str = "median"
    study: str = "vistrain-sweep"
    metric: str = "accuracy"
    seed: int = 0
    base: dict = field(default_factory=dict)  # settings every trial shares (a --config file)
    label_from_name: str | None = None
    cache_dir: Path | str | bool | None = None

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"--trials must be at least 1 (got {self.trials})")
        for name, value, choices in (("sampler", self.sampler, SAMPLERS), ("pruner", self.pruner, PRUNERS),
                                     ("metric", self.metric, METRICS)):
            if value not in choices:
                raise ConfigError(f"{name} {value!r} is not one of {', '.join(choices)}")
        # Before the first trial, not as a traceback from inside one.
        needed = [("optuna", "Optuna")] + ([("pg8000", "pg8000, PostgreSQL's driver,")]
                                           if str(self.storage or "").startswith(("postgresql://", "postgres://")) else [])
        for module, what in needed:
            if importlib.util.find_spec(module) is None:
                raise ConfigError(f"vistrain sweep needs {what} which is not installed: {EXTRA_HINT.format('sweep')}")


def storage_url(url: str | None, out: Path) -> str:
    """SQLite in the sweep folder by default; ``postgresql://`` uses the pure-Python pg8000 driver."""
    if url is None:
        return f"sqlite:///{(out / 'study.db').resolve()}"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+pg8000://" + url.split("://", 1)[1]
    return url


def _sampler(cfg: SweepConfig, created: bool):
    import optuna

    # Workers joining a shared study draw from their own stream, or they would repeat the first's trials.
    seed = cfg.seed if created else cfg.seed + os.getpid()
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.sampler == "grid":
        return optuna.samplers.GridSampler(grid(cfg.space), seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, cfg.trials // 3))


def _pruner(name: str):
    import optuna

    if name == "median":  # stop a trial whose best-so-far is below the median of earlier trials at that epoch
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def open_study(cfg: SweepConfig):
    """Create the study, or join it when another worker did; returns (study, created)."""
    import optuna

    cfg.out.mkdir(parents=True, exist_ok=True)
    url = storage_url(cfg.storage, cfg.out)
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # A worker that dies mid-trial stops beating; its trial is marked failed instead of running forever.
                storage = optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
            break
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy/driver errors vary by backend; say which URL failed and why
            # Workers started together race to create the schema; the loser finds it made on a retry.
            if attempt == 4 or not ("already exists" in str(exc) or "duplicate key" in str(exc)):
                raise ConfigError(f"cannot open sweep storage {cfg.storage or url}: {str(exc).splitlines()[0]}") from None
            time.sleep(0.5 + attempt)
    direction = "maximize"
    try:
        optuna.create_study(storage=storage, study_name=cfg.study, direction=direction, load_if_exists=False)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        created = False
    study = optuna.load_study(study_name=cfg.study, storage=storage,
                              sampler=_sampler(cfg, created), pruner=_pruner(cfg.pruner))
    return study, created


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_sweep(cfg: SweepConfig, reporter: Reporter | None = None):
    """Run trials until the study holds ``cfg.trials``; returns the study."""
    import optuna

    from vistrain.api import train

    ui = reporter or SilentReporter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, created = open_study(cfg)
    me = worker_id()
    ui.log(f"Study {cfg.study!r} in {cfg.storage or storage_url(None, cfg.out)} "
           f"({'created' if created else 'joined'}; worker {me}), {cfg.trials} trial(s) in all")
    base = {k: v for k, v in cfg.base.items() if k not in ("data", "out", "label_from_name", "cache_dir")}

    def objective(trial) -> float:
        if trial.number >= cfg.trials:
            # Another worker took the last trial between our count and our ask: record nothing more.
            trial.set_user_attr("surplus", True)
            study.stop()
            raise optuna.TrialPruned("surplus trial: the study already holds its trials")
        values = suggest(trial, cfg.space)
        options = to_options(values, base, f"trial {trial.number}")
        options.pop("valid_fraction", None)
        # A trial is scored, not shipped (best.yaml retrains the winner, with the check): on climbing the
        # fine-tuned network's familiarity pass took ~29 s of each trial.
        options.setdefault("familiarity", False)
        run_dir = cfg.out / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("worker", me)
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items() if cfg.space[k].kind != "fixed")
        ui.log(f"trial {trial.number}: {shown}")

        def report(epoch: int, score: float) -> None:
            trial.report(score, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        t0 = time.perf_counter()
        try:
            run = train(cfg.data, out=run_dir, label_from_name=cfg.label_from_name,
                        valid_fraction=cfg.base.get("valid_fraction", 0.2), cache_dir=cfg.cache_dir,
                        on_epoch=report, **options)
        except ValueError as exc:  # settings that cannot work together: a failed trial, the sweep goes on
            trial.set_user_attr("error", str(exc))
            ui.log(f"  trial {trial.number} failed: {exc}")
            raise
        m = run.metrics["valid"]
        value = m["accuracy"] if cfg.metric == "accuracy" else m["macro_avg"]["f1"]
        trial.set_user_attr("valid_accuracy", m["accuracy"])
        trial.set_user_attr("valid_macro_f1", m["macro_avg"]["f1"])
        if "test" in run.metrics:
            trial.set_user_attr("test_accuracy", run.metrics["test"]["accuracy"])
        trial.set_user_attr("stage", run.result.stage)
        if run.result.pinned:  # what its time budget decided: best.yaml pins it, to repeat this trial
            trial.set_user_attr("pinned", run.result.pinned)
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
        ui.log(f"  trial {trial.number}: validation {cfg.metric.replace('_', ' ')} {value:.1%} "
               f"({time.perf_counter() - t0:.0f} s)")
        return value

    # Counting RUNNING trials too: with several workers, the study stops at exactly cfg.trials.
    stop_at = optuna.study.MaxTrialsCallback(cfg.trials, states=None)
    if len(study.trials) < cfg.trials:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(objective, n_trials=cfg.trials, callbacks=[stop_at], catch=(ValueError,))
    return study


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)

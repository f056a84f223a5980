"""Run a sweep: each trial is an ordinary training run in ``OUT/trials/NNNN``; Optuna chooses the settings.

The study lives in a database: a SQLite file in the sweep folder by default (nothing to start), or a
shared PostgreSQL server, where any number of ``vistrain sweep`` workers on any machines pull trials
from the same study until it holds ``--trials`` of them. Trials share the scan and feature caches,
so probe-only trials take seconds after the first.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from vistrain.config_file import ConfigError, yaml_scalar
from vistrain.extras import EXTRA_HINT
from vistrain.progress import Reporter, SilentReporter
from vistrain.sweep.space import Param, check_against_base, grid, suggest, to_options

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
    space_file: Path | None = None  # where the space came from, for the errors about its values

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
        check_against_base(self.space, self.base)
        if self.sampler == "grid":  # now, not once the study has been created in the storage
            grid(self.space)
        check_values(self)


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the sweep; ``study`` holds the trials that finished before it (the interrupted
    one is marked, and not counted against ``--trials`` when the same command runs again)."""

    def __init__(self, study) -> None:
        super().__init__("sweep interrupted")
        self.study = study


class _TrialInterrupted(Exception):
    """Raised out of a trial that Ctrl-C cut short: Optuna records it failed (never complete, never
    scored as the probe it fell back to) and samplers ignore it."""


def trial_base(cfg: SweepConfig) -> dict:
    """The settings every trial shares: the --config file's, less where the data is and where runs go,
    and ``resume`` (a run's train_config.yaml given as --config may say it: each trial is a new run)."""
    return {k: v for k, v in cfg.base.items() if k not in ("data", "out", "label_from_name", "cache_dir", "resume")}


def trial_options(values: dict, base: dict, source: str) -> dict:
    """``train``'s keyword arguments for a trial drawing ``values`` (``valid_fraction`` among them)."""
    options = to_options(values, base, source)
    # A trial is scored, not shipped (best.yaml retrains the winner, with the check): on climbing the
    # fine-tuned network's familiarity pass took ~29 s of each trial.
    options.setdefault("familiarity", False)
    return options


def _train_config(cfg: SweepConfig, options: dict):
    """The TrainConfig that ``train`` builds from a trial's options, built as it builds it: constructing
    it is what checks every setting, so a value refused here is one every trial drawing it would fail on."""
    from vistrain.api import train_config

    options = dict(options)
    valid_fraction = options.pop("valid_fraction", None)
    return train_config(cfg.data, cfg.out / "trials" / "0000", options, cfg.label_from_name, valid_fraction,
                        cache_dir=False)  # no cache is opened: only the settings are built


def _shown(value) -> str:
    return yaml_scalar(value) if value is None or isinstance(value, bool) else repr(value)


def check_values(cfg: SweepConfig) -> None:
    """Refuse, all at once and before the study starts, each value of the space that every trial drawing
    it would fail on: a choice, a fixed value, either end of a range.

    Each is tried in the TrainConfig a trial would build, beside the fixed values and the shared settings,
    the other swept settings at their defaults. A value that fails only beside some value of another swept
    setting (an ensemble backbone beside mode finetune) is left to fail those trials alone: the others work.
    """
    source = str(cfg.space_file or "the search space")
    # A setting the space sets is every trial's own: the --config file's value never reaches a trial.
    shared = {k: v for k, v in trial_base(cfg).items() if k not in cfg.space}

    def failure(values: dict) -> str | None:
        try:
            _train_config(cfg, trial_options(values, shared, source))
        except ValueError as exc:  # TrainError, BackboneError, DataError, ConfigError: each names the value
            return str(exc)
        return None

    said = failure({})
    if said:
        raise ConfigError(f"every trial would fail on the settings they share (--config): {said}")
    bad, context = [], {}
    fixed = {n: p.value for n, p in cfg.space.items() if p.kind == "fixed"}
    for name, value in fixed.items():
        said = failure({name: value})
        if said:
            bad.append(f"{name}: {_shown(value)}: {said}")
        else:
            context[name] = value
    said = failure(context)
    if said:  # each fixed value works alone, not with the others: no trial can run
        bad.append(f"{', '.join(context)} together: {said}")
        context = {}
    for name, p in cfg.space.items():
        if p.kind == "choice":
            tried = [(value, "") for value in p.choices]
        elif p.kind in ("int", "float"):
            tried = [(p.low, " (the range's low end)"), (p.high, " (the range's high end)")]
        else:
            continue
        for value, what in tried:
            said = failure({**context, name: value})
            if said:
                bad.append(f"{name}: {_shown(value)}{what}: {said}")
    if bad:
        raise ConfigError(f"{source}: {len(bad)} value(s) that every trial drawing them would fail on "
                          f"(correct or remove them):\n" + "\n".join(f"  {line}" for line in bad))


def uncounted(trial) -> bool:
    """A trial that does not use up one of ``--trials``: handed back by a late worker, or cut short by Ctrl-C."""
    return bool(trial.user_attrs.get("surplus") or trial.user_attrs.get("interrupted"))


def counted_trials(study) -> list:
    return [t for t in study.get_trials(deepcopy=False) if not uncounted(t)]


def _space_record(space: dict[str, Param]) -> dict:
    # Through JSON, as the study stores user attributes: the same space compares equal after the round trip.
    return json.loads(json.dumps({n: {k: v for k, v in vars(p).items() if k != "name"} for n, p in space.items()},
                                 default=str))


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


def _storage(url: str, worker: str):
    """An RDBStorage whose new trials name ``worker`` from the moment they exist.

    Optuna creates a trial (RUNNING) in ``ask``, before the objective runs; a Ctrl-C in between would
    leave a trial that no attribute of ours names, counted as running until the heartbeat's grace period
    ends. Written in the same transaction as the trial, the name lets the interrupted worker find it
    (:func:`_give_back_cut_short`). Optuna has no public hook there: the override is of the method both
    RDBStorage and Optuna's caching wrapper around it create trials with; the sweep's Ctrl-C tests fail
    if that changes.
    """
    import optuna
    from optuna.trial import FrozenTrial, TrialState

    class Storage(optuna.storages.RDBStorage):
        def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
            if template_trial is None:  # a waiting (enqueued) trial brings its own: the objective names it
                template_trial = FrozenTrial(number=-1, state=TrialState.RUNNING, value=None,
                                             datetime_start=datetime.now(), datetime_complete=None, params={},
                                             distributions={}, user_attrs={"worker": worker}, system_attrs={},
                                             intermediate_values={}, trial_id=-1)
            return super()._create_new_trial(study_id, template_trial)

    # A worker that dies mid-trial stops beating; its trial is marked failed instead of running forever.
    return Storage(url, heartbeat_interval=60, grace_period=180)


def open_study(cfg: SweepConfig, worker: str | None = None):
    """Create the study, or join it when another worker did; returns (study, created).

    ``worker``: the name the trials this process creates carry (default :func:`worker_id`)."""
    import optuna

    cfg.out.mkdir(parents=True, exist_ok=True)
    url = storage_url(cfg.storage, cfg.out)
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = _storage(url, worker or worker_id())
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
    mine = {"space": _space_record(cfg.space), "metric": cfg.metric}
    if created:
        for key, value in mine.items():
            study.set_user_attr(key, value)
    else:
        # Optuna refuses a changed range or choice list only once a trial draws it, trial after trial
        # ("dynamic value space"); and scores of another metric or space would not compare anyway.
        theirs = study.user_attrs
        if "space" in theirs and theirs["space"] != mine["space"]:
            changed = sorted(n for n in set(theirs["space"]) | set(mine["space"])
                             if theirs["space"].get(n) != mine["space"].get(n))
            raise ConfigError(f"study {cfg.study!r} in {cfg.storage or url} was made with another search space "
                              f"(differs in: {', '.join(changed)}); start a new study with --study NEW or another "
                              f"--out, or restore the space it was made with")
        if "metric" in theirs and theirs["metric"] != cfg.metric:
            raise ConfigError(f"study {cfg.study!r} in {cfg.storage or url} maximises validation {theirs['metric']}, "
                              f"not {cfg.metric}; give --metric {theirs['metric']}, or start a new study with --study NEW")
    return study, created


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _give_back_cut_short(study, worker: str) -> None:
    """Fail ``worker``'s trials that Ctrl-C left RUNNING, marked interrupted: not counted against ``--trials``.

    Ctrl-C in Optuna's own code, after it created a trial and before the objective's handler could
    mark it, or after the objective returned and before Optuna recorded the result, leaves the trial
    RUNNING; running, it would count as another worker's trial in progress until the heartbeat's grace
    period (180 s) ended, and the same command run again meanwhile would run one trial too few.
    Other workers' RUNNING trials are theirs, in progress, and still count.
    """
    import optuna

    states = optuna.trial.TrialState
    for t in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
        if t.user_attrs.get("worker") != worker:
            continue
        try:
            # Optuna lends no Trial for a trial whose ask() was cut short: its attributes go through the storage.
            study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            study._storage.set_trial_user_attr(t._trial_id, "error", "interrupted (Ctrl-C)")
            study.tell(t.number, state=states.FAIL, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # Optuna recorded its end after all (Ctrl-C came after the write): it stands as recorded


def run_sweep(cfg: SweepConfig, reporter: Reporter | None = None):
    """Run trials until the study holds ``cfg.trials``; returns the study.

    Ctrl-C raises :class:`SweepInterrupted` (a KeyboardInterrupt) once the trial it cut short is recorded."""
    import optuna

    from vistrain.api import train

    ui = reporter or SilentReporter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    me = worker_id()
    study, created = open_study(cfg, me)
    ui.log(f"Study {cfg.study!r} in {cfg.storage or storage_url(None, cfg.out)} "
           f"({'created' if created else 'joined'}; worker {me}), {cfg.trials} trial(s) in all")
    base = trial_base(cfg)
    interrupted: list[int] = []

    def run_trial(trial) -> float:
        # The study's place of this trial, not counting trials that gave theirs back: a trial cut short by
        # Ctrl-C leaves its place to the next run of the same command.
        given_back = sum(1 for t in study.get_trials(deepcopy=False) if t.number < trial.number and uncounted(t))
        if trial.number - given_back >= cfg.trials:
            # Another worker took the last trial between our count and our ask: record nothing more.
            trial.set_user_attr("surplus", True)
            study.stop()
            raise optuna.TrialPruned("surplus trial: the study already holds its trials")
        run_dir = cfg.out / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("worker", me)  # named at creation (_storage), unless it was an enqueued trial
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        t0 = time.perf_counter()
        try:
            values = suggest(trial, cfg.space)
            shown = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items() if cfg.space[k].kind != "fixed")
            ui.log(f"trial {trial.number}: {shown}")
            options = trial_options(values, base, f"trial {trial.number}")

            def report(epoch: int, score: float) -> None:
                trial.report(score, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {epoch}")

            run = train(cfg.data, out=run_dir, label_from_name=cfg.label_from_name, cache_dir=cfg.cache_dir,
                        on_epoch=report, **options)
            # Fine-tuning takes Ctrl-C as "keep the best so far" and returns: for a trial that is a score of
            # settings never trained to the end (often the probe's), not a result.
            if run.result.finetune and run.result.finetune.interrupted:
                raise KeyboardInterrupt
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

    def objective(trial) -> float:
        # The whole trial under the handler, its first steps too: wherever in it Ctrl-C lands, the
        # trial is marked and gives its place back.
        try:
            return run_trial(trial)
        except KeyboardInterrupt:
            interrupted.append(trial.number)
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("error", "interrupted (Ctrl-C)")
            study.stop()
            raise _TrialInterrupted("interrupted (Ctrl-C)") from None

    def stop_when_full(study, trial) -> None:
        # Counting RUNNING trials too: with several workers, the study stops at exactly cfg.trials.
        if len(counted_trials(study)) >= cfg.trials:
            study.stop()

    if len(counted_trials(study)) >= cfg.trials:
        ui.log(f"  the study already holds {cfg.trials} trial(s): nothing to run (raise --trials for more)")
        return study
    verbosity = optuna.logging.get_verbosity()
    # Optuna logs a failed trial with its traceback as a warning; the trial's one line above says why,
    # and trials.csv keeps the reason.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(objective, n_trials=cfg.trials, callbacks=[stop_when_full],
                           catch=(ValueError, _TrialInterrupted))
    except KeyboardInterrupt:  # in Optuna's own code: between trials, or about one it just made or ended
        _give_back_cut_short(study, me)
        raise SweepInterrupted(study) from None
    finally:
        optuna.logging.set_verbosity(verbosity)
    if interrupted:
        raise SweepInterrupted(study)
    return study


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)

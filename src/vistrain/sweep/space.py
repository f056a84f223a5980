"""The search space file: train settings mapped to a range, a list of choices, or a fixed value.

    lr: {low: 1.0e-4, high: 3.0e-3, log: true}     # a range (ints when both ends are ints; step optional)
    backbone: [efficientnet_lite0, efficientnet_lite2]   # choices
    mode: probe                                     # fixed for every trial
    augment.jitter: {low: 0.0, high: 0.4}            # one augmentation setting

Settings not named keep their defaults (or the values of the sweep's ``--config`` file).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from vistrain.config_file import ConfigError, config_keys, normalise, read_yaml

NOT_SWEPT = ("data", "out", "cache_dir", "resume")  # where and what, not how: the sweep decides these
# Settings that only fine-tuning reads: with mode fixed to probe they change nothing, yet the sampler
# would spend trials on them and the importance plot and best.yaml would credit whatever it drew.
FINETUNE_ONLY = ("lr", "epochs", "batch_size", "label_smoothing", "patience", "weight_decay", "dropout",
                 "schedule", "max_memory")
# Settings that change which photos score a trial: trials varying them are scored on different
# validation sets, so their scores do not compare.
SPLIT_KEYS = ("valid_fraction", "seed")
PAIR_KEYS = ("augment.scale", "augment.ratio")  # (low, high) tuples: no single number or choice fits


@dataclass
class Param:
    name: str
    kind: str  # "float", "int", "choice" or "fixed"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list | None = None
    value: object = None


def _known_keys() -> list[str]:
    from vistrain.data.augment import AugmentConfig

    keys = [k for k in config_keys() if k not in NOT_SWEPT and k != "augment"]
    return keys + [f"augment.{f.name}" for f in fields(AugmentConfig)]


def _param(name: str, spec, source: str) -> Param:
    where = f"{source}: {name}"
    if isinstance(spec, dict):
        unknown = set(spec) - {"low", "high", "log", "step"}
        if unknown or not {"low", "high"} <= set(spec):
            raise ConfigError(f"{where}: a range is {{low: L, high: H}} with optional log: true and step: S "
                              f"(got {spec})")
        low, high = spec["low"], spec["high"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
            raise ConfigError(f"{where}: range ends must be numbers with low < high (got {low!r}, {high!r})")
        log = bool(spec.get("log", False))
        if log and low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0 (got {low})")
        kind = "int" if isinstance(low, int) and isinstance(high, int) else "float"
        return Param(name, kind, low, high, log, spec.get("step"))
    if isinstance(spec, list):
        if not spec or len({repr(v) for v in spec}) != len(spec):
            raise ConfigError(f"{where}: choices must be a non-empty list without repeats (got {spec})")
        if not all(v is None or isinstance(v, (str, int, float, bool)) for v in spec):
            raise ConfigError(f"{where}: each choice must be a single value (got {spec})")
        return Param(name, "choice", choices=list(spec))
    return Param(name, "fixed", value=spec)


def load_space(path: Path | str) -> dict[str, Param]:
    path = Path(path)
    data = read_yaml(path, "search space file")
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: expected a mapping of settings to ranges or choices")
    known = _known_keys()
    space = {}
    for name, spec in data.items():
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: {name!r} cannot be swept{hint}; settings: {', '.join(sorted(known))}")
        space[name] = _check(_param(name, spec, str(path)), str(path))
    if not any(p.kind != "fixed" for p in space.values()):
        raise ConfigError(f"{path}: nothing to search: give at least one range or list of choices")
    return space


def _check(p: Param, source: str) -> Param:
    """Refuse a setting every trial would fail on, or that the runner cannot vary, before any trial runs."""
    where = f"{source}: {p.name}"
    if p.name == "label_from_name":
        raise ConfigError(f"{where}: the labels are the data, not a training setting: give them with "
                          f"--label-from-name or in the --config file")
    if p.name in SPLIT_KEYS and p.kind != "fixed":
        raise ConfigError(f"{where}: {p.name} draws the train/valid split, so trials would be scored on different "
                          f"validation images and their scores would not compare; fix it (a single value here "
                          f"or in --config) instead of sweeping it")
    if p.name in PAIR_KEYS:
        raise ConfigError(f"{where}: a (low, high) pair, which a range or a list of choices cannot give; "
                          f"set it in the --config file (augment: {{{p.name.split('.')[1]}: [0.2, 1.0]}})")
    # Each end of a range and each choice, checked as a --config file would be: a wrong type fails here
    # once, naming the key, not in every trial.
    values = ([p.value] if p.kind == "fixed" else p.choices if p.kind == "choice" else [p.low, p.high])
    for value in values:
        to_options({p.name: value}, {}, f"{where} = {value!r}")
    return p


def check_against_base(space: dict[str, Param], base: dict) -> None:
    """Refuse fine-tuning settings in a space whose every trial only probes."""
    mode = space["mode"].value if "mode" in space and space["mode"].kind == "fixed" else (
        None if "mode" in space else base.get("mode"))
    if mode != "probe":
        return
    idle = [n for n, p in space.items() if p.kind != "fixed" and (n in FINETUNE_ONLY or n.startswith("augment."))]
    if idle:
        raise ConfigError(f"{', '.join(idle)}: fine-tuning setting(s) swept while every trial only probes "
                          f"(mode: probe), so they cannot change a score; remove them, or sweep mode: [probe, finetune] "
                          f"or mode: finetune")


def suggest(trial, space: dict[str, Param]) -> dict:
    """One trial's values, as plain settings (``augment.*`` keys stay dotted; see :func:`to_options`)."""
    values = {}
    for name, p in space.items():
        if p.kind == "float":
            values[name] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
        elif p.kind == "int":
            values[name] = trial.suggest_int(name, p.low, p.high, log=p.log, step=int(p.step or 1))
        elif p.kind == "choice":
            values[name] = trial.suggest_categorical(name, p.choices)
        else:
            values[name] = p.value
    return values


def to_options(values: dict, base: dict, source: str) -> dict:
    """Base settings with a trial's values on top, checked like a ``--config`` file."""
    from dataclasses import asdict

    merged = dict(base)
    augment = dict(asdict(base["augment"])) if "augment" in base else {}
    for name, value in values.items():
        if name.startswith("augment."):
            augment[name.split(".", 1)[1]] = value
        else:
            merged[name] = value
    if augment:
        merged["augment"] = augment
    return normalise(merged, source)


def grid(space: dict[str, Param]) -> dict[str, list]:
    """Every point of the space for the grid sampler: choices, and ranges that have a step."""
    out = {}
    for name, p in space.items():
        if p.kind == "choice":
            out[name] = p.choices
        elif p.kind in ("float", "int"):
            if p.step is None and p.kind == "float":
                raise ConfigError(f"{name}: the grid sampler needs choices or a range with a step")
            step = p.step or 1
            pts = np.arange(p.low, p.high + step / 2, step)
            out[name] = [int(v) for v in pts] if p.kind == "int" else [float(round(v, 12)) for v in pts]
    return out

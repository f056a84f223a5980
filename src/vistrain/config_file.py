"""Training settings in a YAML file: read (unknown keys rejected with a suggestion), merged under the
command line's explicit flags, and written back resolved into every run folder (``train_config.yaml``).

A file holds any :class:`~vistrain.training.settings.TrainConfig` field plus the data settings
(``data``, ``label_from_name``, ``valid_fraction``, ``cache_dir``). The resolved file of a run, or the
``best.yaml`` of a sweep, is itself a valid ``--config`` file.
"""

from __future__ import annotations

import argparse
import difflib
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:  # the CLI builds its parser from this module: no torch import at --help time
    from vistrain.data.augment import AugmentConfig
    from vistrain.training.settings import TrainConfig

CONFIG_NAME = "train_config.yaml"
DATA_KEYS = ("data", "label_from_name", "valid_fraction", "cache_dir")
PATH_KEYS = ("data", "out", "cache_dir")
# Numbers YAML may write as ints ("lr: 1" is 1.0); a string here is left for TrainConfig to judge
# (e.g. a value like "auto" where a setting accepts one).
FLOAT_KEYS = ("lr", "label_smoothing", "probe_c", "weight_decay", "dropout", "valid_fraction", "time_budget", "max_memory")
INT_KEYS = ("epochs", "batch_size", "patience", "seed", "image_size")
FLAGS_DEFAULTS = "_flag_defaults"


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the key."""


def config_keys() -> list[str]:
    from vistrain.training.settings import TrainConfig

    return [f.name for f in fields(TrainConfig) if f.name != "data"] + list(DATA_KEYS)


def _suggest(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(mapping: dict, source: str) -> None:
    keys = config_keys()
    for key in mapping:
        if key not in keys:
            raise ConfigError(f"{source}: unknown setting {key!r}{_suggest(str(key), keys)}; "
                              f"known settings: {', '.join(sorted(keys))}")


def _augment(value, source: str) -> AugmentConfig:
    from vistrain.data.augment import AugmentConfig

    if isinstance(value, AugmentConfig):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: augment must be a mapping of {', '.join(f.name for f in fields(AugmentConfig))}")
    names = [f.name for f in fields(AugmentConfig)]
    for key in value:
        if key not in names:
            raise ConfigError(f"{source}: unknown augment setting {key!r}{_suggest(str(key), names)}")
    v = {k: tuple(x) if isinstance(x, list) else x for k, x in value.items()}
    try:
        return AugmentConfig(**v)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: augment: {exc}") from None


def normalise(mapping: dict, source: str) -> dict:
    """Checked keys and values with the types TrainConfig expects (paths, floats, AugmentConfig)."""
    check_keys(mapping, source)
    out = {}
    for key, value in mapping.items():
        if value is not None and key in PATH_KEYS:
            value = Path(str(value)).expanduser()
        elif key == "augment":
            value = _augment(value, source)
        elif key == "ensemble" and value is False:
            value = "off"  # YAML 1.1 reads a bare `off` as false
        elif key == "probe_c" and value == "auto":
            value = None  # chosen by validation log-loss
        elif value is not None and key in FLOAT_KEYS and not isinstance(value, str):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{source}: {key} must be a number (got {value!r})")
            value = float(value)
        elif value is not None and key in INT_KEYS and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{source}: {key} must be a whole number (got {value!r})")
        out[key] = value
    return out


def read_yaml(path: Path, what: str):
    """A YAML file's content (``{}`` when empty); ConfigError naming the file when missing or invalid."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None


def load_config(path: Path | str) -> dict:
    """The settings in a YAML file, checked; raises ConfigError naming the file and the key."""
    path = Path(path)
    data = read_yaml(path, "configuration file")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings (key: value), got {type(data).__name__}")
    return normalise(data, str(path))


def resolved_config(cfg: TrainConfig) -> dict:
    """Every setting of a run as plain YAML-ready values; ``train --config`` accepts it as is."""
    d = {k: v for k, v in asdict(cfg).items() if k not in ("data", "out", "resume")}
    d["augment"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["augment"].items()}
    d["data"] = str(Path(cfg.data.root).resolve())  # the file must work from any folder, as its header says
    d["label_from_name"] = cfg.data.label_from_name
    d["valid_fraction"] = cfg.data.valid_fraction
    return d


def save_config(cfg: TrainConfig, path: Path, pinned: dict | None = None, caveat: str | None = None) -> None:
    """The run's settings as ``train --config`` reads them. ``pinned``: settings replacing the request
    where the time budget decided from this machine's speed (see training.planning.budget_decisions); the
    header names each, with what was asked. ``caveat``: what even those cannot repeat."""
    settings = resolved_config(cfg)
    text = "# Resolved training settings; reproduce with: vistrain train --config THIS_FILE --out NEW_RUN\n"
    if pinned:
        changes = ", ".join(f"{k} {yaml_scalar(settings[k])} -> {yaml_scalar(pinned[k])}" for k in settings if k in pinned)
        text += (f"# The {settings['time_budget']:g} s time budget planned this run from this machine's "
                 f"speed; pinned, so that\n# any machine repeats it: {changes}\n")
        settings.update(pinned)
    if caveat:
        text += f"# Not repeatable: {caveat}\n"
    path.write_text(text + yaml.safe_dump(settings, sort_keys=False))


def yaml_scalar(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def track_explicit_flags(parser: argparse.ArgumentParser) -> None:
    """Make flags the user did not type absent from the parsed namespace, keeping their defaults aside.

    A flag typed with its default value (``--mode auto``) must still override the file, so
    comparing values with defaults is not enough.
    """
    defaults = {}
    for action in parser._actions:  # argparse keeps its actions here; the public API has no iterator
        if action.option_strings and action.dest not in ("help", "config") and action.default != argparse.SUPPRESS:
            defaults[action.dest] = action.default
            action.default = argparse.SUPPRESS
    parser.set_defaults(**{FLAGS_DEFAULTS: defaults})


def resolve_train_args(args: argparse.Namespace) -> tuple[argparse.Namespace, dict]:
    """Fill flags not typed from ``--config`` then from their defaults; settings with no flag go to ``extra``."""
    defaults: dict = getattr(args, FLAGS_DEFAULTS, {})
    given = {k for k in defaults if hasattr(args, k)}
    config = getattr(args, "config", None)
    if config is None and getattr(args, "resume", defaults.get("resume", False)):
        # Resuming continues the interrupted run as it was set up; flags typed now still win.
        from vistrain.training.checkpoint import in_progress_file

        saved = in_progress_file(Path(getattr(args, "out", defaults.get("out") or ".")), CONFIG_NAME)
        config = saved if saved.exists() else None
    file_cfg = load_config(config) if config else {}
    if "time_budget" in file_cfg and "no_time_budget" in defaults and file_cfg["time_budget"] is None:
        file_cfg.pop("time_budget")
        if "time_budget" not in given:  # a typed --time-budget beats the file's "no limit"
            file_cfg["no_time_budget"] = True
    for dest, default in defaults.items():
        if dest not in given:
            setattr(args, dest, file_cfg.get(dest, default))
    if getattr(args, "data", None) is None:
        if "data" not in file_cfg:
            raise ConfigError("no dataset: give DATA on the command line or `data:` in the --config file")
        args.data = file_cfg["data"]
    taken = set(defaults) | {"data"}
    extra = {k: v for k, v in file_cfg.items() if k not in taken}
    return args, extra

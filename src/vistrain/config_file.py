"""Training settings in a YAML file: read (unknown keys rejected with a suggestion), merged under the
command line's explicit flags, and written back resolved into every run folder (``train_config.yaml``).

A file holds any :class:`~vistrain.training.settings.TrainConfig` field plus the data settings
(``data``, ``label_from_name``, ``valid_fraction``, ``cache_dir``). The resolved file of a run, or the
``best.yaml`` of a sweep, is itself a valid ``--config`` file.
"""

from __future__ import annotations

import argparse
import difflib
import numbers
import re
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
FLOAT_KEYS = ("lr", "label_smoothing", "probe_c", "weight_decay", "dropout", "valid_fraction", "time_budget", "max_memory")
INT_KEYS = ("epochs", "batch_size", "patience", "seed", "image_size")
FLAGS_DEFAULTS = "_flag_defaults"

# What each setting must be, said in every type error. Only types are checked here: a wrong type
# would reach a comparison in TrainConfig and crash there; ranges and choices stay TrainConfig's
# (and the split's) to check, with one rule in one place: check_ranges runs their check early, to
# name the file.
EXPECTED = {
    "lr": "a number between 0 and 1, or auto",
    "label_smoothing": "a number from 0 up to 1",
    "probe_c": "a positive number, or auto",
    "weight_decay": "a number from 0 up to 1",
    "dropout": "a number from 0 up to 1",
    "valid_fraction": "a number between 0 and 1",
    "time_budget": "a positive number of seconds, or null for no limit",
    "max_memory": "a positive number of gigabytes, or null for half the free memory",
    "epochs": "a whole number, at least 1",
    "batch_size": "a whole number, at least 1",
    "patience": "a whole number of epochs, at least 1",
    "seed": "a whole number",
    "image_size": "a whole number of pixels from 32 to 1024, or null to choose from the photos",
    "backbone": "a backbone name such as efficientnet_lite0, or names joined by +",
    "label_from_name": "a regular expression whose first group is the label, or null",
    "familiarity": "true, or false to skip the familiarity check",
    "resume": "true to continue the interrupted run in out, or false",
    "data": "a folder or CSV file, relative to the config file's folder or absolute",
    "out": "a folder, relative to the config file's folder or absolute",
    "cache_dir": "a folder, relative to the config file's folder or absolute, or null for the default",
}
NULLABLE = ("time_budget", "max_memory", "image_size", "probe_c", "label_from_name", "cache_dir")
BOOL_KEYS = ("familiarity", "resume")
AUGMENT_EXPECTED = {
    "scale": "[low, high]: shares of the canvas area, 0.05 <= low <= high <= 1",
    "ratio": "[low, high]: crop aspect ratios (width / height)",
    "flip": "true, false or auto",
    "jitter": "a number from 0 to 1",
}


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


def _expected(key: str) -> str:
    """What fits a setting; a list of choices comes from the module that checks it, so the two agree."""
    if key in EXPECTED:
        return EXPECTED[key]
    from vistrain.data.transforms import RESIZE_METHODS
    from vistrain.training.balance import BALANCE_METHODS
    from vistrain.training.device import DEVICES
    from vistrain.training.grow import ENSEMBLES
    from vistrain.training.schedules import SCHEDULES
    from vistrain.training.settings import MODES

    choices = {"mode": MODES, "resize": RESIZE_METHODS, "ensemble": ENSEMBLES, "balance": BALANCE_METHODS,
               "schedule": SCHEDULES, "device": DEVICES}[key]
    return f"{', '.join(choices[:-1])} or {choices[-1]}"


def _shown(value) -> str:
    """A value as the file spells it: null, true, false; others as Python quotes them ('fast', 0.3)."""
    if value is None or isinstance(value, bool):
        return yaml_scalar(value)
    return repr(value)


def _bad(source: str, key: str, value, what: str, expected: str, fits_unquoted: bool = False) -> ConfigError:
    if fits_unquoted:
        expected += ", written without quotes"  # quoted, YAML keeps "10" or "true" as text
    return ConfigError(f"{source}: {key}: {_shown(value)} is not {what} (expected {expected})")


def _unquoted(value) -> object:
    """What YAML would have read had a text value been written without quotes."""
    if not isinstance(value, str):
        return value
    try:
        return yaml.load(value, Loader=_Loader)  # _Loader is a SafeLoader: builds no objects
    except yaml.YAMLError:
        return value


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)  # YAML's yes/no are bools


def _pair(value, source: str, key: str) -> tuple[float, float]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value)):
        raise _bad(source, f"augment.{key}", value, "a pair of numbers", AUGMENT_EXPECTED[key])
    return float(value[0]), float(value[1])


def _augment(value, source: str) -> AugmentConfig:
    from vistrain.data.augment import AugmentConfig

    if isinstance(value, AugmentConfig):
        return value
    names = [f.name for f in fields(AugmentConfig)]
    if not isinstance(value, dict):
        raise _bad(source, "augment", value, "a mapping", f"settings among {', '.join(names)}, "
                                                         "e.g. {jitter: 0.3, scale: [0.5, 1.0]}")
    for key in value:
        if key not in names:
            raise ConfigError(f"{source}: unknown augment setting {key!r}{_suggest(str(key), names)}")
    v = {}
    for key, x in value.items():
        if key in ("scale", "ratio"):
            x = _pair(x, source, key)
        elif key == "flip" and not (isinstance(x, bool) or x == "auto"):  # not `in (True, ...)`: 1 == True
            raise _bad(source, "augment.flip", x, "one of the choices", AUGMENT_EXPECTED["flip"])
        elif key == "jitter":
            if not _is_number(x):
                raise _bad(source, "augment.jitter", x, "a number", AUGMENT_EXPECTED["jitter"], _is_number(_unquoted(x)))
            x = float(x)
        v[key] = x
    try:
        return AugmentConfig(**v)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: augment: {exc}") from None


def _value(key: str, value, source: str):
    """One setting with the type TrainConfig expects; ConfigError naming the key, the value and what fits."""
    if key == "augment":
        return _augment(value, source)
    if key == "ensemble" and value is False:
        return "off"  # YAML 1.1 reads a bare `off` as false
    if key == "probe_c" and value == "auto":
        return None  # chosen by validation log-loss
    if key == "lr" and value == "auto":
        return value  # the range test runs first (api.train)
    if value is None:
        if key in NULLABLE:
            return None
        raise _bad(source, key, value, "allowed", _expected(key))
    if key in PATH_KEYS:
        # A number is a folder name too (a year, say); a list or a flag is not.
        if isinstance(value, (str, Path)) or _is_number(value):
            return Path(str(value)).expanduser()
        raise _bad(source, key, value, "a path", _expected(key))
    if key in FLOAT_KEYS:
        if not _is_number(value):
            raise _bad(source, key, value, "a number", _expected(key), _is_number(_unquoted(value)))
        return float(value)
    if key in INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise _bad(source, key, value, "a whole number", _expected(key), type(_unquoted(value)) is int)
        return int(value)
    if key in BOOL_KEYS:
        if not isinstance(value, bool):
            raise _bad(source, key, value, "a yes/no value", _expected(key), isinstance(_unquoted(value), bool))
        return value
    if not isinstance(value, str):  # names and choices: mode, backbone, device, label_from_name...
        raise _bad(source, key, value, "text", _expected(key))
    return value


def check_ranges(settings: dict, origin: dict) -> None:
    """Refuse a value of the right type that its checker does not accept, naming the file it came
    from (``origin``: key -> file). The checker is TrainConfig's (for ``valid_fraction``, DataConfig's)
    run on that value alone, every other setting at its default: the rule stays in one place, and its
    message, which names the setting but not the file, gets the file in front. Settings that hold
    only together (an ensemble backbone with mode finetune) are still TrainConfig's to refuse."""
    from vistrain.data.dataset import DataConfig
    from vistrain.training.settings import TrainConfig

    checked = {f.name for f in fields(TrainConfig)} - {"data", "out", "resume"}
    for key, value in settings.items():
        try:
            if key == "valid_fraction":
                DataConfig(Path("."), valid_fraction=value)
            elif key in checked and not (key == "lr" and value == "auto"):  # auto: the range test picks it
                # out unlike data: TrainConfig refuses an --out that is the data folder itself
                TrainConfig(data=DataConfig(Path(".")), out=Path(CONFIG_NAME), **{key: value})
        except ValueError as exc:  # TrainError, DataError, BackboneError
            raise ConfigError(f"{origin[key]}: {key}: {exc}") from None


def normalise(mapping: dict, source: str) -> dict:
    """Checked keys and values with the types TrainConfig expects (paths, floats, AugmentConfig);
    ConfigError, naming ``source``, the key and the value, for an unknown key or a value of the wrong type."""
    check_keys(mapping, source)
    return {key: _value(key, value, source) for key, value in mapping.items()}


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading ``1e-4`` as a number: YAML 1.1 wants ``1.0e-4`` and reads
    ``1e-4`` as text, so a learning rate written the usual way would be refused as "not a number"."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def read_yaml(path: Path, what: str):
    """A YAML file's content (``{}`` when empty); ConfigError naming the file when missing or invalid."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        return yaml.load(path.read_text(), Loader=_Loader) or {}  # _Loader is a SafeLoader: builds no objects
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None


def load_config(path: Path | str) -> dict:
    """The settings in a YAML file, checked; raises ConfigError naming the file and the key.

    Relative paths (``data``, ``out``, ``cache_dir``) are relative to the file's folder, as a CSV's
    image paths are to the CSV's: the file means the same from whichever folder it is used.
    """
    path = Path(path)
    data = read_yaml(path, "configuration file")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings (key: value), got {type(data).__name__}")
    settings = normalise(data, str(path))
    for key in PATH_KEYS:
        if isinstance(settings.get(key), Path) and not settings[key].is_absolute():
            settings[key] = path.parent / settings[key]
    return settings


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
    """Fill flags not typed from ``--config`` then from their defaults; settings with no flag go to ``extra``.

    With ``--resume`` the interrupted run's own settings come first, the ``--config`` file over them
    and typed flags over both: a file naming only what may change (patience, say) resumes the run.
    """
    defaults: dict = getattr(args, FLAGS_DEFAULTS, {})
    given = {k for k in defaults if hasattr(args, k)}
    config = getattr(args, "config", None)
    file_cfg = load_config(config) if config else {}
    origin = dict.fromkeys(file_cfg, config)  # the file each setting came from, for errors about it
    if getattr(args, "resume", file_cfg.get("resume", defaults.get("resume", False))):
        from vistrain.training.checkpoint import in_progress_file

        out = getattr(args, "out", file_cfg.get("out", defaults.get("out") or Path(".")))
        saved = in_progress_file(Path(out), CONFIG_NAME)
        if saved.exists():
            run_cfg = load_config(saved)
            origin = {**dict.fromkeys(run_cfg, saved), **origin}
            file_cfg = {**run_cfg, **file_cfg}
    if "time_budget" in file_cfg and "no_time_budget" in defaults and file_cfg["time_budget"] is None:
        file_cfg.pop("time_budget")
        if "time_budget" not in given:  # a typed --time-budget beats the file's "no limit"
            file_cfg["no_time_budget"] = True
    # A typed flag's value is the flag's to answer for: TrainConfig's message then, without a file name.
    # (A typed --no-time-budget replaces the file's time_budget as a typed --time-budget would.)
    typed = given | ({"time_budget"} if "no_time_budget" in given else set())
    check_ranges({k: v for k, v in file_cfg.items() if k not in typed}, origin)
    for dest, default in defaults.items():
        if dest not in given:
            setattr(args, dest, file_cfg.get(dest, default))
    if getattr(args, "data", None) is None:
        if "data" not in file_cfg:
            raise ConfigError("no dataset: give DATA on the command line or `data:` in the --config file")
        args.data = file_cfg["data"]
        if not args.data.exists():  # said here, naming the file: later errors would name only the path
            raise ConfigError(f"{origin['data']}: data: {args.data}: no such file or folder (a relative path "
                              "in a config file is relative to the file's folder)")
    taken = set(defaults) | {"data"}
    extra = {k: v for k, v in file_cfg.items() if k not in taken}
    return args, extra

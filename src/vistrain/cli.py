"""The ``vistrain`` command: each sub-command (a module in ``vistrain.commands``) parses flags,
calls one library function and prints a report."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from vistrain import __version__, commands


def _command_modules() -> list:
    mods = [importlib.import_module(f"vistrain.commands.{m.name}") for m in pkgutil.iter_modules(commands.__path__)]
    return sorted(mods, key=lambda m: (m.ORDER, m.NAME))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vistrain", description="Train, evaluate and use image classifiers from folders of photos, on a CPU.")
    parser.add_argument("--version", action="version", version=f"vistrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for mod in _command_modules():
        mod.register(sub)
        sub.choices[mod.NAME].set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rich.console import Console

    from vistrain.progress import RichReporter

    console = Console(stderr=getattr(args, "json", False))  # keep stdout pure JSON with --json
    reporter = RichReporter(Console(stderr=True))
    try:
        return args._run(args, console, reporter)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    except (ValueError, FileNotFoundError) as exc:
        # Our errors (DataError, TrainError, BackboneError, ModelError...) say what is wrong and where.
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())

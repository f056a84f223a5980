"""The ``vistrain`` command: each sub-command (a module in ``vistrain.commands``) parses flags,
calls one library function and prints a report."""

from __future__ import annotations

import argparse
import errno
import importlib
import pkgutil
import sys

from rich.markup import escape

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
    for stream in (sys.stdout, sys.stderr):
        # A file name that is not UTF-8 (kept by Python as surrogate escapes) prints as its escapes,
        # as the CSV and JSON outputs write it, instead of raising UnicodeEncodeError mid-report.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
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
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return 2
    except Exception as exc:
        said = disk_error(exc)
        if said is None:
            raise  # a bug: the traceback is what a report of it needs
        console.print(f"[bold red]error:[/] {escape(said)}", highlight=False)
        return 2


def disk_error(exc: Exception) -> str | None:
    """What to tell a person when a write failed for want of space or permission (no traceback for
    that); None for anything else. safetensors reports a full disk in its own error's text."""
    full = (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left on device" in str(exc)
    if full:
        what = (f" (writing {exc.filename})" if exc.filename else "") if isinstance(exc, OSError) else f" ({exc})"
        return (f"no space left on the disk{what}. `vistrain cache` shows what vistrain's cache holds; "
                "`vistrain cache --clear pixels` frees the most, and costs only decoding time")
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or exc}"
    return None


if __name__ == "__main__":
    sys.exit(main())

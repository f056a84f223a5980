"""Putting an export folder in place: built beside it, swapped in whole, the user's own files carried
over, Ctrl-C held off while the folders are renamed, and nothing left behind when it fails."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path


class ExportError(ValueError):
    """An export that cannot be made or did not pass verification; the message says which check failed."""


def make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns those created, deepest first."""
    made = []
    for p in [folder, *folder.parents]:
        if p.exists():
            break
        made.append(p)
    folder.mkdir(parents=True, exist_ok=True)
    return made


def remove_empty(folders: list[Path]) -> None:
    for p in folders:  # deepest first; one that is not empty (someone else wrote there) stays
        with contextlib.suppress(OSError):
            p.rmdir()


@contextlib.contextmanager
def interrupts_deferred():
    """Ctrl-C waits for the block to finish: between its renames, the export folder is not there."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives signals
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        if caught and callable(previous):  # SIG_IGN (a background job) stays ignored
            previous(signal.SIGINT, None)


def swap_in(work: Path, target: Path, out: Path, ours: Callable[[Path], bool]) -> None:
    """Put the finished ``work`` folder where ``target`` is, carrying over the files the earlier
    export folder held that vistrain did not write (``ours`` false: a user's own README.md, say)."""
    with interrupts_deferred():
        if not target.exists():
            try:
                os.rename(work, target)
            except OSError as exc:  # made meanwhile, by someone else
                raise ExportError(f"{out}: the new export could not be put there ({exc})") from exc
            return
        theirs = [p for p in target.iterdir() if not ours(p)]
        old = target.parent / f"{work.name}.old"
        moved: list[str] = []
        try:
            for p in theirs:
                os.rename(p, work / p.name)
                moved.append(p.name)
            os.rename(target, old)
            os.rename(work, target)
        except OSError as exc:
            if not target.exists() and old.exists():
                os.rename(old, target)
            for name in moved:
                with contextlib.suppress(OSError):
                    os.rename(work / name, target / name)
            raise ExportError(f"{out}: the new export could not replace the earlier one ({exc}); "
                              f"the earlier one is unchanged") from exc
        shutil.rmtree(old, ignore_errors=True)

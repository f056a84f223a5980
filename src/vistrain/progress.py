"""Progress reporting that the library calls and the caller chooses: silent, or rich bars with ETA."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol


class Reporter(Protocol):
    def stage(self, name: str, total: int, unit: str = "img") -> contextlib.AbstractContextManager[Callable[[int], None]]:
        """A context giving an ``advance(n)`` callable for one stage of ``total`` items."""

    def log(self, message: str) -> None: ...


class SilentReporter:
    @contextlib.contextmanager
    def stage(self, name: str, total: int, unit: str = "img") -> Iterator[Callable[[int], None]]:
        yield lambda n: None

    def log(self, message: str) -> None:
        pass


class RichReporter:
    """Bars with throughput and ETA on a rich console (stderr by default, so stdout stays clean)."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)

    @contextlib.contextmanager
    def stage(self, name: str, total: int, unit: str = "img") -> Iterator[Callable[[int], None]]:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = [
            TextColumn("[bold]{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=self.console, transient=False) as bar:
            task = bar.add_task(name, total=total, rate="")

            def advance(n: int) -> None:
                bar.advance(task, n)
                t = bar.tasks[task]
                if t.speed:
                    bar.update(task, rate=f"{t.speed:.1f} {unit}/s")

            yield advance

    def log(self, message: str) -> None:
        # Messages carry paths and class names: a '[old]' in one is text, not a rich style tag.
        self.console.print(message, markup=False)

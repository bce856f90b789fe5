"""Progress of long phases (scan, chunks, validation) with counts and ETA, on stderr through Rich."""

from __future__ import annotations

from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class BuildProgress:
    """Thin wrapper so stages start, advance and stop tasks without knowing about Rich."""

    def __init__(self, console: Any = None, disable: bool = False):
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=console, disable=disable, transient=False,
        )
        self._started = False

    def start(self, description: str, total: int | None) -> TaskID:
        """`total` None: a phase whose size is not known before it ends (a scan): the bar pulses
        and the elapsed time runs; `describe` says what it has reached."""
        if not self._started:
            self._progress.start()
            self._started = True
        return self._progress.add_task(description, total=total)

    def advance(self, task: TaskID, amount: int = 1) -> None:
        self._progress.advance(task, amount)

    def describe(self, task: TaskID, description: str) -> None:
        self._progress.update(task, description=description)

    def stop(self, task: TaskID) -> None:
        state = self._progress.tasks[self._index(task)]
        total = state.total if state.total is not None else max(int(state.completed), 1)
        self._progress.update(task, total=total, completed=total)

    def _index(self, task: TaskID) -> int:
        return [t.id for t in self._progress.tasks].index(task)

    def close(self) -> None:
        if self._started:
            self._progress.stop()
            self._started = False

    def __enter__(self) -> BuildProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

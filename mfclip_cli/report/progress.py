"""The one progress bar of the CLI (scan, train, eval): on stderr, gone when done, silent unless asked for."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


def progress_bar(console: Console, *, enabled: bool, description: str = "{task.description}",
                 elapsed: bool = False) -> Progress:
    """A Rich progress bar: description, bar, done/total and time left (``elapsed``: time so far).

    Disabled (it draws nothing) unless ``enabled``; callers pass ``not quiet and console.is_terminal``.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    clock = TimeElapsedColumn() if elapsed else TimeRemainingColumn()
    return Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), clock, console=console,
                    disable=not enabled, transient=True)

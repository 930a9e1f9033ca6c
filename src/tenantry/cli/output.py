"""What every ``tenantry`` command shares: the one-line error, the console, progress bars.

Apart from :mod:`tenantry.cli.main` so that the command modules it registers
can use them without importing it back.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, ClassVar, TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

#: Width used when stdout is not a terminal: rich would otherwise wrap tables at
#: 80 columns, which splits rows in logs and breaks ``grep``.
_PIPE_WIDTH = 200


# -- errors -------------------------------------------------------------------------
def _one_line(message: str) -> str:
    return " ".join(message.split())


class CliError(click.ClickException):
    """An expected failure: shown as a single ``error: ...`` line on stderr."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", file=file, err=file is None)


class CliUsageError(CliError):
    """A usage error in the same one-line form; exit status 2, as click uses."""

    exit_code: ClassVar[int] = 2


def stdin_is_interactive() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):  # closed or detached stdin
        return False


def confirm_destructive(what: str, *, yes: bool) -> None:
    """Ask before doing *what* (``"delete ..."``) unless *yes*; a :class:`CliError` if not agreed.

    A script without ``--yes`` must fail loudly, not hang on a prompt or take
    whatever is piped in as consent to delete data.
    """
    if yes:
        return
    if not stdin_is_interactive():
        raise CliError(
            f"refusing to {what} without confirmation: not running interactively; "
            "pass --yes to go ahead"
        )
    # The question goes to stderr, so that stdout holds only the result (--json).
    if not click.confirm(f"{what[0].upper()}{what[1:]}?", default=False, err=True):
        raise CliError(f"did not {what}")


def make_console() -> Console:
    """A console for the current stdout; markup off, so tenant names print verbatim."""
    console = Console(markup=False, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = _PIPE_WIDTH
    return console


def echo_json(value: Any) -> None:
    """*value* as indented JSON with sorted keys: stable output for scripts to diff."""
    click.echo(json.dumps(value, indent=2, sort_keys=True))


# -- progress -------------------------------------------------------------------------
#: What the lifecycle functions call: ``(phase, done, total)``.
ProgressCallback = Callable[[str, int, int | None], None]

_F = TypeVar("_F", bound=Callable[..., Any])


def progress_option(command: _F) -> _F:
    """``--progress/--no-progress``: default on exactly when stderr is a terminal."""
    return click.option(
        "--progress/--no-progress",
        "show_progress",
        default=None,
        help="Progress bars on stderr (default: when stderr is a terminal).",
    )(command)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (ValueError, OSError):  # closed or detached stderr
        return False


@contextmanager
def progress_bars(show: bool | None) -> Iterator[ProgressCallback | None]:
    """A callback drawing one bar per phase on stderr, or ``None`` when not shown.

    ``None`` (rather than a callback that draws nothing) lets the library skip
    the work it does only to report progress, such as counting rows. Bars go
    to stderr, so stdout keeps only the result a script may parse; on a
    terminal they redraw in place, elsewhere (``--progress`` into a log) the
    final state is written once at the end.
    """
    if show is None:
        show = _stderr_is_terminal()
    if not show:
        yield None
        return
    console = Console(stderr=True, markup=False, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = _PIPE_WIDTH
    bars = Progress(
        SpinnerColumn(finished_text="done"),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    tasks: dict[str, TaskID] = {}

    def report(phase: str, done: int, total: int | None) -> None:
        task = tasks.get(phase)
        if task is None:
            task = tasks[phase] = bars.add_task(phase, total=total)
        # update() (not add_task) is what marks a task finished, an empty one too.
        bars.update(task, total=total, completed=done)

    with bars:
        yield report

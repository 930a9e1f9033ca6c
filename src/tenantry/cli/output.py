"""What every ``tenantry`` command shares: the one-line error and the console.

Apart from :mod:`tenantry.cli.main` so that the command modules it registers
can use them without importing it back.
"""

from __future__ import annotations

import json
import os
from typing import IO, Any, ClassVar

import click
from rich.console import Console

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


def make_console() -> Console:
    """A console for the current stdout; markup off, so tenant names print verbatim."""
    console = Console(markup=False, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = _PIPE_WIDTH
    return console


def echo_json(value: Any) -> None:
    """*value* as indented JSON with sorted keys: stable output for scripts to diff."""
    click.echo(json.dumps(value, indent=2, sort_keys=True))

"""The ``tenantry`` command: set up a catalog, manage tenants, run the demo.

Operators run this against production stores, often from scripts, so it keeps
two promises. Every expected failure is one ``error: ...`` line on stderr with
exit status 1 (2 for usage errors), never a traceback, so a script can report it
and a human can act on it. And no password is ever printed: URLs go through
:func:`tenantry.tenancy.config.mask_url`, and any error text coming from a database
driver is scrubbed of the configured stores' passwords before it is shown.

This module is the root group and that error policy; each command group lives
in a module of its own and is registered here, in one place, so no command
module ever imports this one.

It also keeps the command quick to answer. ``tenantry --help`` and ``tenantry
--version`` import no command module, and so neither SQLAlchemy nor anything
else heavy: :data:`COMMANDS` names each command's module and its one-line help,
and a command's module is imported only when that command runs or its own
``--help`` is asked for. The error policy imports what it needs only while an
error is being reported.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

import click

from tenantry import __version__

if TYPE_CHECKING:
    from sqlalchemy.exc import SQLAlchemyError

    from tenantry.cli.output import CliError
    from tenantry.cli.state import CliState


# -- the error policy -----------------------------------------------------------------
def _state_of(ctx: click.Context | None) -> CliState | None:
    if ctx is None:
        return None
    from tenantry.cli.state import CliState

    return ctx.find_object(CliState)


def _database_error(exc: SQLAlchemyError, state: CliState | None) -> CliError:
    from sqlalchemy.exc import DBAPIError, OperationalError

    from tenantry.cli.output import CliError
    from tenantry.tenancy.config import mask_url

    raw = str(exc.orig) if isinstance(exc, DBAPIError) else str(exc)
    reason = raw.strip().splitlines()[0] if raw.strip() else type(exc).__name__
    where = state.describe_store() if state is not None else "(unknown)"
    if isinstance(exc, OperationalError) and (exc.statement is None or exc.connection_invalidated):
        message = f"cannot connect to store {where}: {reason}"
    elif isinstance(exc, DBAPIError):
        message = f"database error on store {where}: {reason}"
    else:
        message = f"store {where}: {reason}"
    return CliError(state.scrub(message) if state is not None else mask_url(message))


def _one_line_error(exc: Exception, ctx: click.Context | None) -> Exception | None:
    """The :class:`CliError` that reports *exc*, or ``None`` to let *exc* through as it is.

    ``--help`` and ``--version`` end by raising ``click``'s ``Exit``, so that is
    let through before anything is imported; past it an error is being
    reported, and the modules that describe it are worth importing.
    """
    if isinstance(exc, click.exceptions.Exit | click.exceptions.NoArgsIsHelpError):
        return None  # not failures (the latter prints the help text)
    from tenantry.cli.output import CliError, CliUsageError

    if isinstance(exc, CliError):
        return None  # already in final form
    if isinstance(exc, click.UsageError):
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return CliUsageError(exc.format_message() + hint)
    if isinstance(exc, click.ClickException):
        return CliError(exc.format_message())
    if isinstance(exc, click.Abort):
        return CliError("aborted")
    from sqlalchemy.exc import SQLAlchemyError

    from tenantry.errors import TenantryError
    from tenantry.tenancy.logs import get_logger

    log = get_logger(__name__)
    if isinstance(exc, TenantryError):
        log.debug("command failed", exc_info=True)
        state = _state_of(ctx)
        message = str(exc) or type(exc).__name__
        return CliError(state.scrub(message) if state is not None else message)
    if isinstance(exc, SQLAlchemyError):
        log.debug("database error", exc_info=True)
        return _database_error(exc, _state_of(ctx))
    return None


@contextmanager
def _reported_errors(ctx: click.Context | None) -> Iterator[None]:
    """Turn every expected failure into a one-line :class:`CliError`."""
    try:
        yield
    except Exception as exc:
        reported = _one_line_error(exc, ctx)
        if reported is None:
            raise
        raise reported from exc


# -- commands, imported when used -----------------------------------------------------
class LazyCommand(NamedTuple):
    """A command known by where it lives and its one-line help until it is used.

    *help* is what ``tenantry --help`` shows before the module is imported:
    the first sentence of the command's docstring (a test keeps the two the
    same). *subcommands* are added to the command, a group, when it loads.
    """

    target: str  #: ``"module:attribute"``
    help: str
    subcommands: tuple[str, ...] = ()

    def load(self) -> click.Command:
        command = _import_command(self.target)
        if self.subcommands:
            if not isinstance(command, click.Group):
                from tenantry.errors import InvariantError

                raise InvariantError(f"{self.target} has subcommands but is not a click group")
            for target in self.subcommands:
                command.add_command(_import_command(target))
        return command

    def stand_in(self, name: str) -> click.Command:
        """A command that only has the help, to list this one without importing it."""
        return click.Command(name, help=self.help)


def _import_command(target: str) -> click.Command:
    module, _, attribute = target.partition(":")
    command = getattr(importlib.import_module(module), attribute)
    if not isinstance(command, click.Command):
        from tenantry.errors import InvariantError

        raise InvariantError(f"{target} is not a click command")
    return command


#: Every command of the root group, registered here and nowhere else.
COMMANDS: Mapping[str, LazyCommand] = {
    "init": LazyCommand(
        "tenantry.cli.init:init", "Write a tenantry.toml and create the tenant catalog."
    ),
    "tenants": LazyCommand(
        "tenantry.cli.tenants:tenants",
        "Create, inspect, suspend, delete, export, import, move and back up tenants.",
        # The lifecycle commands that act on one tenant sit in the ``tenants`` group.
        subcommands=(
            "tenantry.cli.lifecycle:export_tenant_cmd",
            "tenantry.cli.lifecycle:import_tenant_cmd",
            "tenantry.cli.lifecycle:backup_tenant_cmd",
            "tenantry.cli.lifecycle:move_tenant_cmd",
        ),
    ),
    "demo": LazyCommand(
        "tenantry.cli.demo:demo",
        "Run the demo: tenants in each isolation mode, the catalogue app and the service.",
    ),
    "queue": LazyCommand(
        "tenantry.cli.queue:queue_group",
        "Inspect and operate on the job queue: list, show, retry, cancel, purge, prune.",
    ),
    "worker": LazyCommand(
        "tenantry.cli.worker:worker",
        "Run a worker until SIGTERM/SIGINT (a second signal stops hard).",
    ),
    "serve": LazyCommand(
        "tenantry.cli.serve:serve",
        "Run the admin API, dashboard, /metrics and an embedded worker in one process.",
    ),
    "migrate": LazyCommand(
        "tenantry.cli.migrate:migrate",
        "Upgrade the global tables, then every tenant that is behind (resumable).",
    ),
    "api-keys": LazyCommand(
        "tenantry.cli.keys:api_keys", "Issue, list and revoke tenants' API keys."
    ),
    "doctor": LazyCommand(
        "tenantry.cli.doctor:doctor",
        "Check every store and tenant for holes in the isolation wall; exit 1 if any.",
    ),
}


class TenantryGroup(click.Group):
    """The root group: it owns error reporting, and loads each command when it is used."""

    def __init__(
        self, *args: Any, lazy_commands: Mapping[str, LazyCommand] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands: Mapping[str, LazyCommand] = lazy_commands or {}

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        # Errors in the global options happen here, before there is a context.
        with _reported_errors(None):
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _reported_errors(ctx):
            return super().invoke(ctx)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in self.lazy_commands:
            command = self.lazy_commands[cmd_name].load()
            self.add_command(command, cmd_name)
        return command

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            # click (8.4 and later) suggests a name from the loaded commands
            # only; suggest from all of them.
            no_such_command = getattr(click.exceptions, "NoSuchCommand", None)
            if no_such_command is None or not isinstance(exc, no_such_command):
                raise
            raise no_such_command(
                exc.command_name, possibilities=self.list_commands(ctx), ctx=ctx
            ) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List every command with its one-line help, importing none that is not loaded."""
        shown = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name) or self.lazy_commands[name].stand_in(name)
            if not command.hidden:
                shown.append((name, command))
        if shown:
            limit = formatter.width - 6 - max(len(name) for name, _ in shown)
            with formatter.section("Commands"):
                formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in shown])


# -- the root group -------------------------------------------------------------------
@click.group(
    cls=TenantryGroup,
    lazy_commands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="PATH",
    help="tenantry.toml to use. Default: $TENANTRY_CONFIG, ./tenantry.toml, "
    "$TENANTRY_DATABASE_URL, else SQLite under ./tenantry-data.",
)
@click.option(
    "--models",
    metavar="MODULE:ATTR",
    default=None,
    help="Tenant tables to provision (a MetaData or declarative base); "
    "overrides tenant_metadata from the config.",
)
@click.option("-v", "--verbose", count=True, help="Log INFO (-v) or DEBUG (-vv) to stderr.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    envvar="TENANTRY_LOG_FORMAT",
    help="Log lines as text, or as one JSON object each. Default: $TENANTRY_LOG_FORMAT, else text.",
)
@click.version_option(version=__version__, prog_name="tenantry")
@click.pass_context
def cli(
    ctx: click.Context,
    config_path: str | None,
    models: str | None,
    verbose: int,
    log_format: str,
) -> None:
    """Multi-tenant persistence: catalog, tenants and their isolation."""
    # Imported here, not at the top: --help and --version never get this far.
    import logging
    from pathlib import Path

    from tenantry.cli.state import CliState
    from tenantry.tenancy.logs import configure_logging

    state = CliState(config_path=None if config_path is None else Path(config_path), models=models)
    ctx.obj = state
    ctx.call_on_close(state.close)
    # The logging set-up is undone when the command ends, so running the CLI
    # in-process (tests, notebooks) does not leave tenantry's logger rerouted.
    logger = logging.getLogger("tenantry")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    levels = (logging.WARNING, logging.INFO, logging.DEBUG)
    level = levels[min(verbose, len(levels) - 1)]
    configure_logging(level, "json" if log_format == "json" else "text")

    def restore_logging() -> None:
        logger.handlers[:], logger.level, logger.propagate = saved

    ctx.call_on_close(restore_logging)


def main() -> NoReturn:
    """Console-script entry point (``tenantry = "tenantry.cli.main:main"``)."""
    cli.main(prog_name="tenantry")


if __name__ == "__main__":  # python -m tenantry.cli.main, when the script is not on PATH
    main()

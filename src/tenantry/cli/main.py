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
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from tenantry.cli import demo, init, lifecycle, migrate, queue, serve, tenants, worker
from tenantry.cli.output import CliError, CliUsageError
from tenantry.cli.state import CliState
from tenantry.errors import TenantryError
from tenantry.tenancy.config import mask_url
from tenantry.tenancy.logs import configure_logging, get_logger

log = get_logger(__name__)

_LOG_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)


# -- the error policy -----------------------------------------------------------------
def _state_of(ctx: click.Context | None) -> CliState | None:
    return None if ctx is None else ctx.find_object(CliState)


def _database_error(exc: SQLAlchemyError, state: CliState | None) -> CliError:
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


@contextmanager
def _reported_errors(ctx: click.Context | None) -> Iterator[None]:
    """Turn every expected failure into a one-line :class:`CliError`."""
    try:
        yield
    except (CliError, click.exceptions.NoArgsIsHelpError):
        raise  # already in final form (the latter prints the help text)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        raise CliUsageError(exc.format_message() + hint) from exc
    except click.ClickException as exc:
        raise CliError(exc.format_message()) from exc
    except click.Abort as exc:
        raise CliError("aborted") from exc
    except TenantryError as exc:
        log.debug("command failed", exc_info=True)
        state = _state_of(ctx)
        message = str(exc) or type(exc).__name__
        raise CliError(state.scrub(message) if state is not None else message) from exc
    except SQLAlchemyError as exc:
        log.debug("database error", exc_info=True)
        raise _database_error(exc, _state_of(ctx)) from exc


class TenantryGroup(click.Group):
    """The root group; it owns error reporting for itself and every subcommand."""

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


# -- the root group -------------------------------------------------------------------
@click.group(cls=TenantryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
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
@click.version_option(package_name="tenantry", prog_name="tenantry")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, models: str | None, verbose: int) -> None:
    """Multi-tenant persistence: catalog, tenants and their isolation."""
    state = CliState(config_path=config_path, models=models)
    ctx.obj = state
    ctx.call_on_close(state.close)
    # The logging set-up is undone when the command ends, so running the CLI
    # in-process (tests, notebooks) does not leave tenantry's logger rerouted.
    logger = logging.getLogger("tenantry")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    configure_logging(_LOG_LEVELS[min(verbose, len(_LOG_LEVELS) - 1)])

    def restore_logging() -> None:
        logger.handlers[:], logger.level, logger.propagate = saved

    ctx.call_on_close(restore_logging)


# -- every command, registered here -----------------------------------------------------
_COMMANDS: tuple[click.Command, ...] = (
    init.init,
    tenants.tenants,
    demo.demo,
    queue.queue_group,
    worker.worker,
    serve.serve,
    migrate.migrate,
)
#: The lifecycle commands that act on one tenant sit in the ``tenants`` group.
_TENANT_COMMANDS: tuple[click.Command, ...] = (
    lifecycle.export_tenant_cmd,
    lifecycle.import_tenant_cmd,
    lifecycle.backup_tenant_cmd,
    lifecycle.move_tenant_cmd,
)
for _command in _COMMANDS:
    cli.add_command(_command)
for _command in _TENANT_COMMANDS:
    tenants.tenants.add_command(_command)


def main() -> NoReturn:
    """Console-script entry point (``tenantry = "tenantry.cli.main:main"``)."""
    cli.main(prog_name="tenantry")


if __name__ == "__main__":  # python -m tenantry.cli.main, when the script is not on PATH
    main()

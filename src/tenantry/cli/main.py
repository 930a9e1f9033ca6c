"""The ``tenantry`` command: set up a catalog, manage tenants, run the demo.

Operators run this against production stores, often from scripts, so it keeps
two promises. Every expected failure is one ``error: ...`` line on stderr with
exit status 1 (2 for usage errors), never a traceback, so a script can report it
and a human can act on it. And no password is ever printed: URLs go through
:func:`tenantry.tenancy.config.mask_url`, and any error text coming from a database
driver is scrubbed of the configured stores' passwords before it is shown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from tenantry.cli.output import CliError, CliUsageError, _echo_json, make_console
from tenantry.demo.tour import DemoBase, run_demo
from tenantry.errors import TenantryError
from tenantry.queue import JobRegistry, Queue, Worker
from tenantry.tenancy.catalog import IsolationMode, Tenant, TenantStatus
from tenantry.tenancy.config import (
    CONFIG_FILE_NAME,
    DEFAULT_DATA_DIR,
    DEFAULT_STORE,
    TenantryConfig,
    config_from_dict,
    load_config,
    mask_url,
)
from tenantry.tenancy.ids import validate_tenant_id
from tenantry.tenancy.logs import configure_logging, get_logger
from tenantry.tenantry import Tenantry, import_object

log = get_logger(__name__)

_LOG_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)


@dataclass
class CliState:
    """What the global options chose; the Tenantry is built on first use, once.

    Building lazily keeps ``--help`` and ``init`` working without a readable
    configuration, and ``target_store`` lets a connection error name the store
    the command was actually talking to.
    """

    config_path: Path | None = None
    models: str | None = None
    target_store: str | None = None
    _config: TenantryConfig | None = field(default=None, repr=False)
    _tenantry: Tenantry | None = field(default=None, repr=False)

    def config(self) -> TenantryConfig:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    def use_config(self, config: TenantryConfig) -> None:
        if self._tenantry is not None:
            raise RuntimeError("the configuration cannot change after Tenantry was built")
        self._config = config

    def tenantry(self, *, tenant_metadata: Any = None) -> Tenantry:
        if self._tenantry is None:
            config = self.config()
            if self.models or config.tenant_metadata or config.global_metadata:
                _import_from_cwd()
            if tenant_metadata is None and self.models:
                tenant_metadata = import_object(self.models)
            self._tenantry = Tenantry(config, tenant_metadata=tenant_metadata)
        return self._tenantry

    def close(self) -> None:
        if self._tenantry is not None:
            self._tenantry.close()
            self._tenantry = None

    # -- error reporting -------------------------------------------------------
    def describe_store(self) -> str:
        if self._config is None:
            return "(configuration not loaded)"
        name = self.target_store or self._config.catalog_store_name
        store = self._config.stores.get(name)
        return f"{name!r}" if store is None else f"{name!r} at {store.masked_url}"

    def scrub(self, text: str) -> str:
        """Remove the stores' real (expanded) passwords, then mask URL-shaped text."""
        if self._config is not None:
            for store in self._config.stores.values():
                for admin in (False, True):
                    try:
                        password = store.parsed_url(admin=admin).password
                    except TenantryError:
                        continue  # ${VAR} not set: there is no secret to leak
                    if password:
                        text = text.replace(str(password), "***")
        return mask_url(text)


def _import_from_cwd() -> None:
    """Let ``module:attr`` references name modules of the project being run in.

    A console script's ``sys.path`` starts with its own bin directory, not the
    working directory, so ``myapp.models:Base`` would not import otherwise.
    """
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


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


# -- output helpers -----------------------------------------------------------------
def _timestamp(tenant: Tenant) -> str:
    return tenant.created_at.strftime("%Y-%m-%d %H:%M:%S")


def _status_text(status: TenantStatus) -> Text:
    styles = {
        TenantStatus.ACTIVE: "green",
        TenantStatus.SUSPENDED: "yellow",
        TenantStatus.MIGRATING: "yellow",
    }
    return Text(status.value, style=styles.get(status, "red"))


def _parse_settings(
    _ctx: click.Context, _param: click.Parameter, values: Sequence[str]
) -> dict[str, Any]:
    """``key=value`` pairs; a value that parses as JSON (``3``, ``true``) keeps its type."""
    settings: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}")
        try:
            settings[key] = json.loads(raw)
        except ValueError:
            settings[key] = raw
    return settings


def _stdin_is_interactive() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):  # closed or detached stdin
        return False


def _toml_string(value: str) -> str:
    """A TOML basic string; escapes what TOML forbids raw (quotes, controls, DEL)."""
    escapes = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    out = []
    for char in value:
        if char in escapes:
            out.append(escapes[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def render_config(url: str, data_dir: str) -> str:
    """The ``tenantry.toml`` that ``init`` writes, with the other keys documented."""
    return f"""\
# tenantry configuration (written by `tenantry init`).
#
# Store URLs may reference environment variables as ${{NAME}}, for example
#   url = "postgresql://app:${{DB_PASSWORD}}@db.internal/app"
# They are expanded only when connecting, so secrets stay out of this file.
# TENANTRY_DATABASE_URL, when set, replaces the default store's URL.

[tenantry]
default_store = "{DEFAULT_STORE}"
data_dir = {_toml_string(data_dir)}
# Tables provisioned for every tenant, and global tables ("module:attribute"):
# tenant_metadata = "myapp.models:TenantBase"
# global_metadata = "myapp.models:GlobalBase"

[stores.{DEFAULT_STORE}]
url = {_toml_string(url)}
# admin_url = "..."        # DDL and provisioning; defaults to url
# rls_role = "tenantry_rls"
"""


# -- the command group --------------------------------------------------------------
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


@cli.command()
@click.option("--database-url", metavar="URL", help="Default store URL (default: SQLite).")
@click.option(
    "--data-dir",
    metavar="DIR",
    default=None,
    help=f"Directory for SQLite data (default: {DEFAULT_DATA_DIR}).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing config file.")
@click.pass_obj
def init(state: CliState, database_url: str | None, data_dir: str | None, force: bool) -> None:
    """Write a tenantry.toml and create the tenant catalog."""
    path = state.config_path or Path(os.environ.get("TENANTRY_CONFIG", CONFIG_FILE_NAME))
    if path.exists() and not force:
        raise CliError(f"{path} already exists; pass --force to overwrite it")
    data_dir = data_dir or DEFAULT_DATA_DIR
    url = database_url or f"sqlite:///{Path(data_dir) / 'default.db'}"
    text = render_config(url, data_dir)
    # Validate before writing, so a typo in the URL leaves no half-made file behind.
    written = config_from_dict(
        {"tenantry": {"data_dir": data_dir}, "stores": {"default": {"url": url}}}
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from exc
    console = make_console()
    store = written.store(DEFAULT_STORE)
    console.print(f"wrote {path} (store {DEFAULT_STORE!r}: {store.masked_url})")
    if "${" not in url and store.parsed_url(expand=False).password:
        console.print(
            "note: the password is stored in the file; consider ${ENV_VAR} in the URL instead",
            style="yellow",
        )
    state.config_path = path
    effective = state.config().store(DEFAULT_STORE)
    state.target_store = effective.name
    state.tenantry().setup()
    overridden = " (from TENANTRY_DATABASE_URL)" if effective.url != url else ""
    console.print(f"catalog ready on {effective.masked_url}{overridden}", style="green")


# -- tenants ------------------------------------------------------------------------
@cli.group()
def tenants() -> None:
    """Create, inspect, suspend, delete, export, import, move and back up tenants."""


@tenants.command("create")
@click.argument("tenant_id", metavar="ID")
@click.option("--name", help="Display name (default: the id).")
@click.option(
    "--isolation",
    type=click.Choice([mode.value for mode in IsolationMode], case_sensitive=False),
    default=IsolationMode.SHARED.value,
    show_default=True,
    help="shared tables, a schema (PostgreSQL) or a database of its own.",
)
@click.option("--store", metavar="S", help="Store to place the tenant on (default store if unset).")
@click.option(
    "--setting",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_parse_settings,
    help="Tenant setting; repeatable. JSON values (3, true, [1]) keep their type.",
)
@click.pass_obj
def create_tenant(
    state: CliState,
    tenant_id: str,
    name: str | None,
    isolation: str,
    store: str | None,
    settings: dict[str, Any],
) -> None:
    """Register a tenant and provision its storage."""
    validate_tenant_id(tenant_id)  # before any file or connection is made
    tenantry = state.tenantry()
    state.target_store = tenantry.store(store).name
    tenant = tenantry.create_tenant(
        tenant_id,
        name=name,
        isolation=IsolationMode(isolation.lower()),
        store=store,
        settings=settings,
    )
    make_console().print(
        f"created tenant {tenant.id!r} ({tenant.isolation.value} isolation "
        f"on store {tenant.store!r})",
        style="green",
    )


@tenants.command("list")
@click.option(
    "--status",
    type=click.Choice([status.value for status in TenantStatus], case_sensitive=False),
    help="Only tenants in this status.",
)
@click.option("--store", metavar="S", help="Only tenants on this store.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def list_tenants(state: CliState, status: str | None, store: str | None, as_json: bool) -> None:
    """List tenants from the catalog."""
    if store is not None:
        state.config().store(store)  # a typo'd store name is an error, not an empty list
    found = state.tenantry().list_tenants(
        status=TenantStatus(status.lower()) if status else None, store=store
    )
    if as_json:
        _echo_json([tenant.to_dict() for tenant in found])
        return
    console = make_console()
    if not found:
        console.print("no tenants")
        return
    table = Table("id", "name", "status", "isolation", "store", "created (UTC)")
    for tenant in found:
        table.add_row(
            Text(tenant.id, style="bold"),
            Text(tenant.name),
            _status_text(tenant.status),
            Text(tenant.isolation.value),
            Text(tenant.store),
            Text(_timestamp(tenant)),
        )
    console.print(table)


@tenants.command("show")
@click.argument("tenant_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def show_tenant(state: CliState, tenant_id: str, as_json: bool) -> None:
    """Show one tenant's catalog entry."""
    tenant = state.tenantry().get_tenant(tenant_id)
    if as_json:
        _echo_json(tenant.to_dict())
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("id", Text(tenant.id))
    table.add_row("name", Text(tenant.name))
    table.add_row("status", _status_text(tenant.status))
    table.add_row("isolation", Text(tenant.isolation.value))
    table.add_row("store", Text(tenant.store))
    table.add_row("settings", Text(json.dumps(tenant.settings, sort_keys=True)))
    table.add_row("created", Text(tenant.created_at.isoformat()))
    table.add_row("updated", Text(tenant.updated_at.isoformat()))
    make_console().print(table)


@tenants.command("suspend")
@click.argument("tenant_id", metavar="ID")
@click.pass_obj
def suspend_tenant(state: CliState, tenant_id: str) -> None:
    """Stop serving a tenant's data (it is kept) until it is resumed."""
    tenant = state.tenantry().suspend_tenant(tenant_id)
    make_console().print(f"tenant {tenant.id!r} suspended", style="yellow")


@tenants.command("resume")
@click.argument("tenant_id", metavar="ID")
@click.pass_obj
def resume_tenant(state: CliState, tenant_id: str) -> None:
    """Serve a suspended tenant's data again."""
    tenant = state.tenantry().resume_tenant(tenant_id)
    make_console().print(f"tenant {tenant.id!r} resumed", style="green")


@tenants.command("delete")
@click.argument("tenant_id", metavar="ID")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def delete_tenant(state: CliState, tenant_id: str, yes: bool) -> None:
    """Delete a tenant and ALL of its data."""
    tenantry = state.tenantry()
    tenant = tenantry.get_tenant(tenant_id)
    what = f"tenant {tenant.id!r} ({tenant.isolation.value} on store {tenant.store!r})"
    if not yes:
        # A script without --yes must fail loudly, not hang on a prompt or treat
        # whatever is piped in as consent to drop a tenant's data.
        if not _stdin_is_interactive():
            raise CliError(
                f"refusing to delete {what} without confirmation: "
                "not running interactively; pass --yes to delete it"
            )
        if not click.confirm(f"Delete {what} and all of its data?", default=False):
            raise CliError(f"{what} was not deleted")
    state.target_store = tenant.store
    tenantry.delete_tenant(tenant.id)
    make_console().print(f"deleted {what}", style="green")


# -- demo ---------------------------------------------------------------------------
@cli.command()
@click.option(
    "--data-dir",
    metavar="DIR",
    default=None,
    help="Run on SQLite under DIR instead of the configured store.",
)
@click.option(
    "--reset/--no-reset",
    default=True,
    show_default=True,
    help="Delete the demo tenants of an earlier run first.",
)
@click.option(
    "--once", is_flag=True, help="Stop when the demo's jobs are done and print a summary."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port of the service (dashboard, admin API); 0: any free port.",
)
@click.option(
    "--app-port",
    default=8001,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port of the demo's product-catalogue app; 0: any free port.",
)
@click.pass_obj
def demo(
    state: CliState,
    data_dir: str | None,
    reset: bool,
    once: bool,
    host: str,
    port: int,
    app_port: int,
) -> None:
    """Run the demo: tenants in each isolation mode, the catalogue app and the service.

    First a self-check: each tenant writes rows and reads back only its own
    (exits 1 if any tenant sees another's). Then the product-catalogue app and
    the tenantry service (dashboard, admin API, embedded worker) start, some
    traffic flows through the app, and their URLs are printed. Serves until
    Ctrl-C, or with --once until the demo's jobs are done.
    """
    if data_dir is not None:
        state.use_config(TenantryConfig.sqlite_default(data_dir))
    tenantry = state.tenantry(tenant_metadata=DemoBase.metadata)
    state.target_store = tenantry.default_store.name
    console = make_console()
    try:
        rows = run_demo(tenantry, console, reset=reset)
    except KeyboardInterrupt:
        raise click.Abort() from None
    leaked = [row["tenant"] for row in rows if not row["only_own_rows"]]
    if leaked:
        raise CliError(f"isolation check failed: {', '.join(leaked)} saw foreign rows")
    try:
        from tenantry.demo.runner import run_catalogue_demo
    except ImportError as exc:
        raise CliError(
            f"the demo's app and service need the 'serve' extra ({exc.name} is missing): "
            "pip install 'tenantry[serve]'"
        ) from exc
    demo_tenants = [tenantry.get_tenant(row["tenant"]) for row in rows]
    logger = logging.getLogger("tenantry")
    if logger.level >= logging.WARNING:  # without -v: the doomed job's retries are expected
        logger.setLevel(logging.ERROR)
    result = asyncio.run(
        run_catalogue_demo(
            tenantry, demo_tenants, console, once=once, host=host, port=port, app_port=app_port
        )
    )
    if result.problems:
        raise CliError("demo check failed: " + "; ".join(result.problems))


# -- queue ----------------------------------------------------------------------------
@cli.group("queue")
def queue_group() -> None:
    """Inspect the job queue."""


@queue_group.command("stats")
@click.option("--tenant", "tenant_id", metavar="ID", help="Only this tenant.")
@click.option(
    "--window",
    default=300.0,
    show_default=True,
    type=click.FloatRange(1),
    help="Seconds over which outcomes and throughput are counted.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def queue_stats(state: CliState, tenant_id: str | None, window: float, as_json: bool) -> None:
    """Queue depth, oldest runnable job and recent outcomes per tenant."""
    if tenant_id is not None:
        validate_tenant_id(tenant_id)
    stats = Queue(state.tenantry(), JobRegistry()).stats(
        tenant_id=tenant_id, window=timedelta(seconds=window)
    )
    if as_json:
        _echo_json(stats.to_dict())
        return
    table = Table(
        "tenant",
        "available",
        "running",
        "scheduled",
        "retryable",
        "oldest runnable",
        f"done/{window:g}s",
        "dead",
        "failing",
        "jobs/s",
    )
    rows = [stats.tenants[k] for k in sorted(stats.tenants)]
    for row in [*rows, stats.total()]:
        age = row.oldest_runnable_age
        table.add_row(
            Text(row.tenant_id, style="bold"),
            str(row.depth.get("available", 0)),
            str(row.running),
            str(row.depth.get("scheduled", 0)),
            str(row.depth.get("retryable", 0)),
            "-" if age is None else f"{age:.1f}s",
            str(row.completed),
            Text(str(row.dead), style="red" if row.dead else ""),
            str(row.failed_attempts),
            f"{row.throughput:.2f}",
        )
    make_console().print(table)


# -- worker -------------------------------------------------------------------------
@cli.command()
@click.option(
    "--app",
    "app_ref",
    required=True,
    metavar="MODULE:REGISTRY",
    help="The application's JobRegistry, e.g. myapp.jobs:registry.",
)
@click.option(
    "--concurrency",
    "-c",
    default=10,
    show_default=True,
    type=click.IntRange(1),
    help="Jobs run at the same time.",
)
@click.option(
    "--prefetch",
    default=None,
    type=click.IntRange(0),
    help="Claimed jobs held beyond the running ones "
    "(default: adaptive, from --concurrency up to --max-prefetch).",
)
@click.option(
    "--max-prefetch",
    default=None,
    type=click.IntRange(0),
    help="Upper bound of the adaptive prefetch (default: 20 x concurrency, at most 1000).",
)
@click.option(
    "--queue",
    "queues",
    multiple=True,
    metavar="Q",
    help="Queue to serve (repeatable; default: the registry's queues).",
)
@click.option("--store", "stores", multiple=True, metavar="S", help="Only these stores.")
@click.option("--tenant", "tenant_ids", multiple=True, metavar="ID", help="Only these tenants.")
@click.option(
    "--lease",
    default=30.0,
    show_default=True,
    type=click.FloatRange(1),
    help="Seconds a claimed job is leased; renewed by heartbeat.",
)
@click.option(
    "--grace",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds running jobs get to finish after SIGTERM/SIGINT.",
)
@click.option(
    "--poll",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.01),
    help="Polling interval when no wake-up arrives.",
)
@click.option(
    "--fair/--no-fair",
    default=True,
    show_default=True,
    help="Share capacity between tenants by weight (off: strict priority, then FIFO).",
)
@click.pass_obj
def worker(
    state: CliState,
    app_ref: str,
    concurrency: int,
    prefetch: int | None,
    max_prefetch: int | None,
    queues: tuple[str, ...],
    stores: tuple[str, ...],
    tenant_ids: tuple[str, ...],
    lease: float,
    grace: float,
    poll: float,
    fair: bool,
) -> None:
    """Run a worker until SIGTERM/SIGINT (a second signal stops hard)."""
    _import_from_cwd()
    registry = import_object(app_ref)
    if not isinstance(registry, JobRegistry):
        raise CliError(f"{app_ref} is not a tenantry JobRegistry")
    for tenant_id in tenant_ids:
        validate_tenant_id(tenant_id)
    logger = logging.getLogger("tenantry")
    if logger.level > logging.INFO:
        logger.setLevel(logging.INFO)  # a worker's activity log is its main output
    tenantry = state.tenantry()
    runner = Worker(
        tenantry,
        registry,
        concurrency=concurrency,
        prefetch=prefetch,
        max_prefetch=max_prefetch,
        queues=queues or None,
        stores=stores or None,
        tenants=tenant_ids or None,
        lease_seconds=lease,
        shutdown_grace=grace,
        poll_interval=poll,
        fair=fair,
        freeze_gc=True,  # this process runs the worker: see Worker.freeze_gc
    )
    Queue(tenantry, registry).setup()
    asyncio.run(runner.run(install_signals=True))
    if runner.busy_threads:
        # Sync handlers past the grace period cannot be interrupted, and Python
        # would wait for their threads at exit. Their jobs were already released
        # (and their outcome is fenced out), so leave without them.
        log.warning(
            "%d sync handler thread(s) still running; their jobs were released. Exiting.",
            runner.busy_threads,
        )
        logging.shutdown()
        os._exit(0)


# -- serve ----------------------------------------------------------------------------
def _service_modules() -> Any:
    """The service package, or a clear error when the 'serve' extra is not installed."""
    try:
        import tenantry.service.serving as serving
    except ImportError as exc:
        raise CliError(
            f"tenantry serve needs the 'serve' extra ({exc.name} is missing): "
            "pip install 'tenantry[serve]'"
        ) from exc
    return serving


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0: any free."
)
@click.option(
    "--app",
    "app_ref",
    default=None,
    metavar="MODULE:REGISTRY",
    help="The application's JobRegistry: enables enqueueing and the embedded worker.",
)
@click.option("--no-worker", is_flag=True, help="Serve the API and dashboard only, run no worker.")
@click.option(
    "--admin-token",
    envvar="TENANTRY_ADMIN_TOKEN",
    show_envvar=True,
    default=None,
    metavar="TOKEN",
    help="Bearer token for the admin API and the dashboard login (prefer the variable).",
)
@click.option(
    "--insecure-dev",
    is_flag=True,
    help="Run WITHOUT an admin token (loopback addresses only; loudly logged).",
)
@click.option(
    "--metrics-token",
    envvar="TENANTRY_METRICS_TOKEN",
    show_envvar=True,
    default=None,
    metavar="TOKEN",
    help="A token that opens /metrics only (the admin token always works).",
)
@click.option("--public-metrics", is_flag=True, help="Serve /metrics without any token.")
@click.option(
    "--session-secret",
    envvar="TENANTRY_SESSION_SECRET",
    show_envvar=True,
    default=None,
    metavar="SECRET",
    help="Key for dashboard session cookies (default: random; sessions end on restart).",
)
@click.option(
    "--concurrency",
    "-c",
    default=10,
    show_default=True,
    type=click.IntRange(1),
    help="Jobs the embedded worker runs at once.",
)
@click.option(
    "--grace",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds running jobs get to finish at shutdown.",
)
@click.option(
    "--poll",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.01),
    help="Worker polling interval when no wake-up arrives.",
)
@click.option(
    "--top-tenants",
    default=50,
    show_default=True,
    type=click.IntRange(1),
    help="Tenants with their own /metrics labels; the rest are summed as '_other'.",
)
@click.pass_obj
def serve(
    state: CliState,
    host: str,
    port: int,
    app_ref: str | None,
    no_worker: bool,
    admin_token: str | None,
    insecure_dev: bool,
    metrics_token: str | None,
    public_metrics: bool,
    session_secret: str | None,
    concurrency: int,
    grace: float,
    poll: float,
    top_tenants: int,
) -> None:
    """Run the admin API, dashboard, /metrics and an embedded worker in one process.

    Needs an admin token (TENANTRY_ADMIN_TOKEN); without --app no worker runs
    and nothing can be enqueued through the API. Stops on SIGTERM/SIGINT,
    giving running jobs --grace seconds.
    """
    serving = _service_modules()
    from tenantry.service import ServiceSettings, create_app
    from tenantry.service.app import INSECURE_BANNER

    if insecure_dev and admin_token is None and not serving.is_loopback(host):
        raise CliError(
            f"--insecure-dev serves only on a loopback address (127.0.0.1, ::1, localhost), "
            f"not {host!r}: set an admin token to listen there"
        )
    settings = ServiceSettings(
        admin_token=admin_token,
        insecure_dev=insecure_dev,
        metrics_token=metrics_token,
        metrics_public=public_metrics,
        session_secret=session_secret.encode() if session_secret else None,
        top_tenants=top_tenants,
    )
    registry = None
    if app_ref is not None:
        _import_from_cwd()
        registry = import_object(app_ref)
        if not isinstance(registry, JobRegistry):
            raise CliError(f"{app_ref} is not a tenantry JobRegistry")
    logger = logging.getLogger("tenantry")
    if logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    tenantry = state.tenantry()
    state.target_store = tenantry.default_store.name
    if settings.open_admin:
        click.secho(f"WARNING: {INSECURE_BANNER}", fg="red", bold=True, err=True)
    app = create_app(
        tenantry,
        registry,
        settings=settings,
        run_worker=not no_worker,
        worker_options={
            "concurrency": concurrency,
            "shutdown_grace": grace,
            "poll_interval": poll,
            "freeze_gc": True,  # this process is the service's: see Worker.freeze_gc
        },
    )
    try:
        sock = serving.bind(host, port)
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    url = serving.url_of(sock)
    worker_note = (
        "no worker (--no-worker)"
        if no_worker
        else f"embedded worker for {app_ref}"
        if registry is not None
        else "no worker (no --app)"
    )
    click.echo(
        f"tenantry service on {url} ({worker_note})\n"
        f"  dashboard  {url}/dashboard/\n"
        f"  API docs   {url}/docs\n"
        f"  metrics    {url}/metrics"
    )
    server = serving.ServiceServer(serving.config(app))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        raise CliError("the service did not start (see the log above)")
    worker_obj = app.state.service.worker
    if worker_obj is not None and worker_obj.busy_threads:
        log.warning(
            "%d sync handler thread(s) still running; their jobs were released. Exiting.",
            worker_obj.busy_threads,
        )
        logging.shutdown()
        os._exit(0)


# -- lifecycle: migrate, export, import (tenantry.cli.lifecycle) -------------------------
def _add_lifecycle_commands() -> None:
    # Imported here: tenantry.cli.lifecycle builds on the helpers above.
    from tenantry.cli import lifecycle

    commands: list[click.Command] = [lifecycle.migrate]
    for command in commands:
        cli.add_command(command)
    tenant_commands: list[click.Command] = [
        lifecycle.export_tenant_cmd,
        lifecycle.import_tenant_cmd,
        lifecycle.backup_tenant_cmd,
        lifecycle.move_tenant_cmd,
    ]
    for command in tenant_commands:
        tenants.add_command(command)


_add_lifecycle_commands()


def main() -> NoReturn:
    """Console-script entry point (``tenantry = "tenantry.cli.main:main"``)."""
    cli.main(prog_name="tenantry")


if __name__ == "__main__":  # python -m tenantry.cli.main, when the script is not on PATH
    main()

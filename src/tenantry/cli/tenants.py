"""``tenantry tenants``: create, list, show, update, suspend, resume and delete tenants.

The group's lifecycle commands (export, import, backup, move) live in
:mod:`tenantry.cli.lifecycle` and are added to it by :mod:`tenantry.cli.main`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table
from rich.text import Text

from tenantry.cli.output import CliError, echo_json, make_console
from tenantry.cli.state import CliState
from tenantry.queue.control import SETTINGS_KEY
from tenantry.tenancy.catalog import IsolationMode, Tenant, TenantStatus
from tenantry.tenancy.ids import validate_tenant_id


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
            settings[key] = json.loads(raw, parse_constant=_no_constant)
        except ValueError:
            settings[key] = raw
    return settings


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON: the catalog (PostgreSQL jsonb) would refuse them.
    raise ValueError(name)


def _stdin_is_interactive() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):  # closed or detached stdin
        return False


@click.group()
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
        echo_json([tenant.to_dict() for tenant in found])
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
    _print_tenant(state.tenantry().get_tenant(tenant_id), as_json)


def _print_tenant(tenant: Tenant, as_json: bool) -> None:
    if as_json:
        echo_json(tenant.to_dict())
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


if TYPE_CHECKING:
    _ParamType = click.ParamType[Any, Any]
else:  # click < 8.5 cannot subscript ParamType at run time
    _ParamType = click.ParamType


class _Limit(_ParamType):
    """A number, or ``none`` to remove the limit (the tenant then has none, or the default)."""

    def __init__(self, number: type[int] | type[float]) -> None:
        self.number = number
        self.name = "integer" if number is int else "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text == "none":
            return _UNSET
        try:
            return self.number(text)
        except ValueError:
            self.fail(
                f"{value!r} is not {'an integer' if self.number is int else 'a number'} "
                "(or 'none' to remove the limit)",
                param,
                ctx,
            )


#: ``--max-running none``: remove the limit from the tenant's queue settings.
_UNSET = object()

#: Queue settings the ``update`` options set, as named in ``settings["queue"]``.
_LIMITS = ("weight", "max_running", "rate", "burst")


def _updated_settings(
    current: dict[str, Any],
    settings: dict[str, Any],
    unset: Sequence[str],
    limits: dict[str, Any],
) -> dict[str, Any]:
    """*current* with the ``--setting``, ``--unset-setting`` and limit options applied."""
    updated = dict(current)
    for key in unset:
        if key not in updated:
            raise CliError(f"the tenant has no setting {key!r} to unset")
        del updated[key]
    updated.update(settings)
    given = {k: v for k, v in limits.items() if v is not None}
    if given:
        queue = updated.get(SETTINGS_KEY) or {}
        if not isinstance(queue, dict):
            raise CliError(f"setting {SETTINGS_KEY!r} is not a mapping; fix it with --setting")
        queue = dict(queue)
        for key, value in given.items():
            if value is _UNSET:
                queue.pop(key, None)
            else:
                queue[key] = value
        if queue:
            updated[SETTINGS_KEY] = queue
        else:
            updated.pop(SETTINGS_KEY, None)
    return updated


@tenants.command("update")
@click.argument("tenant_id", metavar="ID")
@click.option("--name", help="New display name.")
@click.option(
    "--setting",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_parse_settings,
    help="Set a top-level setting (repeatable); JSON values (3, true, {...}) keep their type.",
)
@click.option(
    "--unset-setting",
    "unset",
    multiple=True,
    metavar="KEY",
    help="Remove a top-level setting (repeatable).",
)
@click.option(
    "--weight",
    type=_Limit(int),
    help="Queue: share of worker capacity when tenants compete (1-1000; 'none': default 1).",
)
@click.option(
    "--max-running",
    type=_Limit(int),
    help="Queue: at most this many of its jobs at once, across all workers ('none': no limit).",
)
@click.option(
    "--rate", type=_Limit(float), help="Queue: job starts per second on average ('none': no limit)."
)
@click.option(
    "--burst",
    type=_Limit(float),
    help="Queue: job starts at once under --rate (default: one second's worth; 'none').",
)
@click.option("--json", "as_json", is_flag=True, help="Print the tenant as JSON.")
@click.pass_obj
def update_tenant(
    state: CliState,
    tenant_id: str,
    name: str | None,
    settings: dict[str, Any],
    unset: tuple[str, ...],
    weight: Any,
    max_running: Any,
    rate: Any,
    burst: Any,
    as_json: bool,
) -> None:
    """Change a tenant's name, settings or queue limits; prints the updated tenant.

    Settings not named are kept (unlike the HTTP API's PATCH, which replaces
    them all). Queue limits land in the 'queue' setting, are checked before
    anything is written, and hold from the workers' next claim.
    """
    validate_tenant_id(tenant_id)
    limits = dict(zip(_LIMITS, (weight, max_running, rate, burst), strict=True))
    if name is None and not settings and not unset and all(v is None for v in limits.values()):
        raise click.UsageError(
            "nothing to update: give --name, --setting, --unset-setting or a queue limit"
        )
    if name is not None and not name.strip():
        raise CliError("a tenant's name must not be empty")
    tenantry = state.tenantry()
    tenant = tenantry.get_tenant(tenant_id)
    changed: dict[str, Any] | None = None
    if settings or unset or any(v is not None for v in limits.values()):
        changed = _updated_settings(dict(tenant.settings), settings, unset, limits)
    updated = tenantry.update_tenant(tenant.id, name=name, settings=changed)
    _print_tenant(updated, as_json)


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
        if not click.confirm(f"Delete {what} and all of its data?", default=False, err=True):
            raise CliError(f"{what} was not deleted")
    state.target_store = tenant.store
    tenantry.delete_tenant(tenant.id)
    make_console().print(f"deleted {what}", style="green")

"""The tenant lifecycle commands: export, import, backup and move.

Registered in the ``tenants`` group by :mod:`tenantry.cli.main`. Each can take
minutes on a large tenant, so each draws progress bars on stderr (by
default when stderr is a terminal; ``--progress`` / ``--no-progress``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from tenantry.cli.output import make_console, progress_bars, progress_option
from tenantry.lifecycle.backup import backup_directory, backup_tenant
from tenantry.lifecycle.export import export_tenant
from tenantry.lifecycle.import_ import import_tenant
from tenantry.lifecycle.move import move_tenant
from tenantry.tenancy.catalog import IsolationMode
from tenantry.tenancy.ids import validate_tenant_id

if TYPE_CHECKING:
    from tenantry.cli.state import CliState


# -- export and import ------------------------------------------------------------------
@click.command("export")
@click.argument("tenant_id", metavar="ID")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@progress_option
@click.pass_obj
def export_tenant_cmd(
    state: CliState, tenant_id: str, file: Path, show_progress: bool | None
) -> None:
    """Write a tenant's rows and unfinished jobs to FILE (one consistent snapshot)."""
    validate_tenant_id(tenant_id)
    tenantry = state.tenantry()
    state.target_store = tenantry.get_tenant(tenant_id).store
    with progress_bars(show_progress) as progress:
        manifest = export_tenant(tenantry, tenant_id, file, progress=progress)
    rows = sum(t.rows for t in manifest.tables)
    make_console().print(
        f"exported tenant {tenant_id!r}: {len(manifest.tables)} table(s), {rows} row(s), "
        f"{manifest.jobs.rows} unfinished job(s) to {file}",
        style="green",
    )


@click.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--as", "as_id", metavar="NEW_ID", help="Import under another tenant id.")
@click.option("--store", metavar="S", help="Store to place the tenant on (default store if unset).")
@click.option(
    "--isolation",
    type=click.Choice([mode.value for mode in IsolationMode], case_sensitive=False),
    help="Isolation mode (default: the exported tenant's).",
)
@progress_option
@click.pass_obj
def import_tenant_cmd(
    state: CliState,
    file: Path,
    as_id: str | None,
    store: str | None,
    isolation: str | None,
    show_progress: bool | None,
) -> None:
    """Create a tenant from an export FILE (checked completely before anything changes)."""
    if as_id is not None:
        validate_tenant_id(as_id)
    tenantry = state.tenantry()
    state.target_store = tenantry.store(store).name
    with progress_bars(show_progress) as progress:
        result = import_tenant(
            tenantry,
            file,
            as_id=as_id,
            store=store,
            isolation=IsolationMode(isolation.lower()) if isolation else None,
            progress=progress,
        )
    make_console().print(
        f"imported tenant {result.tenant.id!r} ({result.tenant.isolation.value} on store "
        f"{result.tenant.store!r}): {sum(result.rows.values())} row(s), {result.jobs} job(s)",
        style="green",
    )


@click.command("backup")
@click.argument("tenant_id", metavar="ID")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@progress_option
@click.pass_obj
def backup_tenant_cmd(
    state: CliState, tenant_id: str, directory: Path, show_progress: bool | None
) -> None:
    """Back a tenant up into DIRECTORY with the database's own tool where one fits.

    pg_dump --schema for a schema tenant, pg_dump of its database for a
    database tenant, SQLite's backup API for a SQLite file, and an export
    for a shared tenant. DIRECTORY is created if missing, but its parent
    must exist (a mistyped path is refused, not created).
    """
    validate_tenant_id(tenant_id)
    backup_directory(directory)  # refuse a bad path before connecting anywhere
    tenantry = state.tenantry()
    state.target_store = tenantry.get_tenant(tenant_id).store
    with progress_bars(show_progress) as progress:
        made = backup_tenant(tenantry, tenant_id, directory, progress=progress)
    make_console().print(
        f"backed up tenant {tenant_id!r} with {made.method} to {made.path}", style="green"
    )


@click.command("move")
@click.argument("tenant_id", metavar="ID")
@click.option("--to-store", metavar="S", help="Store to move to (default: where it is).")
@click.option(
    "--isolation",
    type=click.Choice([mode.value for mode in IsolationMode], case_sensitive=False),
    help="Isolation mode to move to (default: the tenant's).",
)
@click.option("--abort", is_flag=True, help="Give up an interrupted move; the tenant stays put.")
@click.option(
    "--drain-timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds to wait, once paused, for the tenant's running jobs before the delta.",
)
@progress_option
@click.pass_obj
def move_tenant_cmd(
    state: CliState,
    tenant_id: str,
    to_store: str | None,
    isolation: str | None,
    abort: bool,
    drain_timeout: float,
    show_progress: bool | None,
) -> None:
    """Move a tenant to another store or isolation mode (run again to resume a crashed move).

    The bulk of the rows is copied while the tenant is still served; then it
    is paused (requests get a retryable 503, jobs wait) while what changed
    meanwhile and its unfinished jobs are copied, the copy is verified and the
    catalog switched, until the old copy is removed.
    """
    validate_tenant_id(tenant_id)
    tenantry = state.tenantry()
    state.target_store = to_store or tenantry.get_tenant(tenant_id).store
    with progress_bars(show_progress) as progress:
        result = move_tenant(
            tenantry,
            tenant_id,
            to_store=to_store,
            isolation=IsolationMode(isolation.lower()) if isolation else None,
            abort=abort,
            drain_timeout=drain_timeout,
            progress=progress,
        )
    where = f"{result.tenant.isolation.value} on store {result.tenant.store!r}"
    if result.aborted:
        make_console().print(f"move of {tenant_id!r} aborted; it stays {where}", style="yellow")
        return
    resumed = " (resumed)" if result.resumed else ""
    make_console().print(
        f"moved tenant {tenant_id!r} to {where}{resumed}: {sum(result.rows.values())} row(s); "
        f"{result.bulk_rows} row(s) copied while served, then paused "
        f"{result.pause_seconds:.2f} s for {result.delta_rows} changed row(s) and "
        f"{result.jobs} job(s); {result.total_seconds:.2f} s in all",
        style="green",
    )

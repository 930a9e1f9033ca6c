"""``tenantry migrate`` and the tenant lifecycle commands (export, import).

Registered on the main command group by :mod:`tenantry.cli.main`; kept apart
because they are the only commands that draw progress bars and long tables.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from tenantry.cli.output import CliError, echo_json, make_console
from tenantry.lifecycle.backup import backup_tenant
from tenantry.lifecycle.export import export_tenant
from tenantry.lifecycle.import_ import import_tenant
from tenantry.lifecycle.migrations.runner import Migrator, Outcome, Report, Result, TargetVersion
from tenantry.lifecycle.migrations.scaffold import scaffold
from tenantry.lifecycle.move import move_tenant
from tenantry.tenancy.catalog import IsolationMode
from tenantry.tenancy.ids import validate_tenant_id

if TYPE_CHECKING:
    from tenantry.cli.state import CliState

_OUTCOME_STYLES = {
    Outcome.UPGRADED: "green",
    Outcome.CURRENT: "green",
    Outcome.FAILED: "red",
    Outcome.NOT_RUN: "yellow",
}
#: Tenants listed per revision by ``--status`` before "... and N more".
_STATUS_SHOWN = 12


def _filters(tenant_ids: Sequence[str]) -> list[str]:
    return [validate_tenant_id(t) for t in tenant_ids]


@click.group("migrate", invoke_without_command=True)
@click.option(
    "--parallel",
    "-p",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Targets migrated at once (threads, one connection each).",
)
@click.option("--tenant", "tenant_ids", multiple=True, metavar="ID", help="Only these tenants.")
@click.option("--store", "stores", multiple=True, metavar="S", help="Only tenants on these stores.")
@click.option(
    "--skip-failing", is_flag=True, help="Go on after a failure (reported; exit status 1)."
)
@click.option(
    "--online",
    is_flag=True,
    help="The migration is safe under traffic: keep serving tenants while it runs.",
)
@click.option(
    "--status", "show_status", is_flag=True, help="List targets by revision; change nothing."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.pass_context
def migrate(
    ctx: click.Context,
    parallel: int,
    tenant_ids: tuple[str, ...],
    stores: tuple[str, ...],
    skip_failing: bool,
    online: bool,
    show_status: bool,
    as_json: bool,
) -> None:
    """Upgrade the global tables, then every tenant that is behind (resumable).

    Each schema and database tenant, and each store's shared tables, has its
    own version table; a re-run touches only what is not at head. Active
    tenants are 'migrating' (not served, jobs paused) while theirs runs,
    unless --online.
    """
    if ctx.invoked_subcommand is not None:
        return
    state: CliState = ctx.obj
    ids = _filters(tenant_ids)
    migrator = Migrator(state.tenantry())
    if show_status:
        _print_status(
            migrator.versions(migrator.targets(tenant_ids=ids, stores=stores), parallel=parallel),
            as_json,
        )
        return
    report = _run_with_progress(migrator, ids, stores, parallel, skip_failing, online, as_json)
    if as_json:
        echo_json(
            {
                "untouched": report.untouched,
                "results": [_result_dict(r) for r in report.results],
            }
        )
    else:
        _print_report(report)
    if report.failed:
        shown = "; ".join(f"{r.target.label}: {r.error}" for r in report.failed[:5])
        more = f" (and {len(report.failed) - 5} more)" if len(report.failed) > 5 else ""
        raise CliError(
            state.scrub(f"{len(report.failed)} target(s) failed to migrate: {shown}{more}")
        )
    not_run = [r for r in report.results if r.outcome is Outcome.NOT_RUN]
    if not_run:
        raise CliError(f"{len(not_run)} target(s) not migrated: the run stopped at a failure")


def _run_with_progress(
    migrator: Migrator,
    ids: list[str],
    stores: Sequence[str],
    parallel: int,
    skip_failing: bool,
    online: bool,
    quiet: bool,
) -> Report:
    progress = Progress(
        TextColumn("migrating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=Console(stderr=True),
        disable=quiet,
        transient=False,
    )
    task = progress.add_task("", total=None)

    def planned(count: int) -> None:
        progress.update(task, total=count)

    def done(result: Result) -> None:
        failed = result.outcome is Outcome.FAILED
        progress.update(
            task, advance=1, description=f"failed: {result.target.label}" if failed else ""
        )

    with progress:
        return migrator.run(
            tenant_ids=ids,
            stores=stores,
            parallel=parallel,
            skip_failing=skip_failing,
            online=online,
            on_plan=planned,
            on_result=done,
        )


def _result_dict(result: Result) -> dict[str, object]:
    return {
        "target": result.target.label,
        "kind": result.target.kind.value,
        "store": result.target.store,
        "tenant": result.target.tenant_id,
        "outcome": result.outcome.value,
        "before": result.before,
        "after": result.after,
        "error": result.error,
        "seconds": round(result.seconds, 3),
    }


def _print_report(report: Report) -> None:
    console = make_console()
    if report.results:
        table = Table("target", "kind", "store", "from", "to", "result", "seconds", "error")
        ordered = sorted(
            report.results, key=lambda r: (r.outcome is not Outcome.FAILED, r.target.label)
        )
        for r in ordered:
            table.add_row(
                Text(r.target.label, style="bold"),
                r.target.kind.value,
                r.target.store,
                r.before or "-",
                r.after or "-",
                Text(r.outcome.value, style=_OUTCOME_STYLES[r.outcome]),
                f"{r.seconds:.2f}",
                Text(r.error or ""),
            )
        console.print(table)
    counts = Counter(r.outcome for r in report.results)
    parts = [f"{counts[o]} {o.value}" for o in Outcome if counts[o]]
    parts.append(f"{report.untouched} already at head")
    console.print(", ".join(parts))


def _print_status(versions: list[TargetVersion], as_json: bool) -> None:
    if as_json:
        echo_json(
            [
                {
                    "target": v.target.label,
                    "kind": v.target.kind.value,
                    "store": v.target.store,
                    "tenant": v.target.tenant_id,
                    "revision": v.revision,
                    "head": v.head,
                    "behind": v.behind,
                }
                for v in versions
            ]
        )
        return
    groups: dict[tuple[str, str | None, str | None], list[str]] = {}
    for v in versions:
        history = "global" if v.target.kind.value == "global" else "tenant"
        groups.setdefault((history, v.revision, v.head), []).append(v.target.label)
    table = Table("history", "revision", "head", "targets", "tenants")
    for (history, revision, head), labels in sorted(groups.items(), key=lambda kv: str(kv[0])):
        shown = ", ".join(labels[:_STATUS_SHOWN])
        if len(labels) > _STATUS_SHOWN:
            shown += f", ... and {len(labels) - _STATUS_SHOWN} more"
        at_head = revision == head
        table.add_row(
            history,
            Text(revision or "(none)", style="green" if at_head else "yellow"),
            head or "(none)",
            str(len(labels)),
            Text(shown),
        )
    make_console().print(table)


@migrate.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def migrate_init(directory: Path) -> None:
    """Create DIR/tenant and DIR/global Alembic script directories."""
    written = scaffold(directory)
    console = make_console()
    for path in written:
        console.print(f"wrote {path}")
    console.print(
        "add to tenantry.toml:\n"
        "[tenantry]\n"
        f'tenant_migrations = "{directory / "tenant"}"\n'
        f'global_migrations = "{directory / "global"}"'
    )


@migrate.command("stamp")
@click.argument("revision", required=False)
@click.option("--tenant", "tenant_ids", multiple=True, metavar="ID", help="Only these tenants.")
@click.option("--store", "stores", multiple=True, metavar="S", help="Only tenants on these stores.")
@click.pass_obj
def migrate_stamp(
    state: CliState, revision: str | None, tenant_ids: tuple[str, ...], stores: tuple[str, ...]
) -> None:
    """Record REVISION (default: head) where no revision is recorded yet.

    For tables made before migrations were set up: nothing is run, and
    targets that already record a revision are left alone.
    """
    stamped = Migrator(state.tenantry()).stamp_unrecorded(
        revision, tenant_ids=_filters(tenant_ids), stores=stores
    )
    make_console().print(f"stamped {len(stamped)} target(s)")


# -- export and import ------------------------------------------------------------------
@click.command("export")
@click.argument("tenant_id", metavar="ID")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def export_tenant_cmd(state: CliState, tenant_id: str, file: Path) -> None:
    """Write a tenant's rows and unfinished jobs to FILE (one consistent snapshot)."""
    validate_tenant_id(tenant_id)
    tenantry = state.tenantry()
    state.target_store = tenantry.get_tenant(tenant_id).store
    manifest = export_tenant(tenantry, tenant_id, file)
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
@click.pass_obj
def import_tenant_cmd(
    state: CliState, file: Path, as_id: str | None, store: str | None, isolation: str | None
) -> None:
    """Create a tenant from an export FILE (checked completely before anything changes)."""
    if as_id is not None:
        validate_tenant_id(as_id)
    tenantry = state.tenantry()
    state.target_store = tenantry.store(store).name
    result = import_tenant(
        tenantry,
        file,
        as_id=as_id,
        store=store,
        isolation=IsolationMode(isolation.lower()) if isolation else None,
    )
    make_console().print(
        f"imported tenant {result.tenant.id!r} ({result.tenant.isolation.value} on store "
        f"{result.tenant.store!r}): {sum(result.rows.values())} row(s), {result.jobs} job(s)",
        style="green",
    )


@click.command("backup")
@click.argument("tenant_id", metavar="ID")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.pass_obj
def backup_tenant_cmd(state: CliState, tenant_id: str, directory: Path) -> None:
    """Back a tenant up into DIRECTORY with the database's own tool where one fits.

    pg_dump --schema for a schema tenant, pg_dump of its database for a
    database tenant, SQLite's backup API for a SQLite file, and an export
    for a shared tenant.
    """
    validate_tenant_id(tenant_id)
    tenantry = state.tenantry()
    state.target_store = tenantry.get_tenant(tenant_id).store
    made = backup_tenant(tenantry, tenant_id, directory)
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
@click.pass_obj
def move_tenant_cmd(
    state: CliState,
    tenant_id: str,
    to_store: str | None,
    isolation: str | None,
    abort: bool,
    drain_timeout: float,
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
    result = move_tenant(
        tenantry,
        tenant_id,
        to_store=to_store,
        isolation=IsolationMode(isolation.lower()) if isolation else None,
        abort=abort,
        drain_timeout=drain_timeout,
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

"""``tenantry migrate``: run the two Alembic histories over every tenant.

Registered on the main command group by :mod:`tenantry.cli.main`; it draws the
progress bar and the per-revision tables of a migration run.
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
from tenantry.lifecycle.migrations.runner import Migrator, Outcome, Report, Result, TargetVersion
from tenantry.lifecycle.migrations.scaffold import scaffold
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

"""``tenantry migrate``: run the two Alembic histories over every tenant.

Registered on the main command group by :mod:`tenantry.cli.main`; it draws the
progress bar and the per-revision tables of a migration run.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from tenantry.cli.output import CliError, CliUsageError, echo_json, make_console
from tenantry.lifecycle.migrations.autogen import HistoryKind, autogenerate, blank_revision
from tenantry.lifecycle.migrations.runner import Migrator, Outcome, Report, Result, TargetVersion
from tenantry.lifecycle.migrations.scaffold import scaffold
from tenantry.tenancy.config import CONFIG_FILE_NAME
from tenantry.tenancy.ids import validate_tenant_id

if TYPE_CHECKING:
    from tenantry.cli.state import CliState

_OUTCOME_STYLES = {
    Outcome.UPGRADED: "green",
    Outcome.DOWNGRADED: "green",
    Outcome.CURRENT: "green",
    Outcome.FAILED: "red",
    Outcome.NOT_RUN: "yellow",
}
#: Tenants listed per revision by ``--status`` before "... and N more".
_STATUS_SHOWN = 12
#: Above this many targets the final report is a summary, not one row per target.
_SUMMARY_OVER = 20

#: Runs a migration with the progress callbacks (on_plan, on_result).
_Run = Callable[[Callable[[int], None], Callable[[Result], None]], Report]


def _filters(tenant_ids: Sequence[str]) -> list[str]:
    return [validate_tenant_id(t) for t in tenant_ids]


def _run_options(verb: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The options an upgrade and a downgrade share: which targets, how many at once."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        for option in reversed(
            (
                click.option(
                    "--parallel",
                    "-p",
                    default=1,
                    show_default=True,
                    type=click.IntRange(1, 64),
                    help=f"Targets {verb} at once (threads, one connection each).",
                ),
                click.option(
                    "--tenant",
                    "tenant_ids",
                    multiple=True,
                    metavar="ID",
                    help="Only these tenants.",
                ),
                click.option(
                    "--store",
                    "stores",
                    multiple=True,
                    metavar="S",
                    help="Only tenants on these stores.",
                ),
                click.option(
                    "--skip-failing",
                    is_flag=True,
                    help="Go on after a failure (reported; exit status 1).",
                ),
            )
        ):
            command = option(command)
        return command

    return decorate


@click.group("migrate", invoke_without_command=True)
@_run_options("migrated")
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

    def run(on_plan: Callable[[int], None], on_result: Callable[[Result], None]) -> Report:
        return migrator.run(
            tenant_ids=ids,
            stores=stores,
            parallel=parallel,
            skip_failing=skip_failing,
            online=online,
            on_plan=on_plan,
            on_result=on_result,
        )

    _finish(state, _run_with_progress("migrating", run, as_json), as_json, "migrate")


def _finish(state: CliState, report: Report, as_json: bool, verb: str) -> None:
    """Print the report; a failure or a stopped run is the one error line and exit status 1."""
    if as_json:
        echo_json(
            {
                "untouched": report.untouched,
                "results": [_result_dict(r) for r in report.results],
            }
        )
    else:
        _print_report(report, "at head" if verb == "migrate" else "there")
    if report.failed:
        shown = "; ".join(f"{r.target.label}: {r.error}" for r in report.failed[:5])
        more = f" (and {len(report.failed) - 5} more)" if len(report.failed) > 5 else ""
        raise CliError(
            state.scrub(f"{len(report.failed)} target(s) failed to {verb}: {shown}{more}")
        )
    not_run = [r for r in report.results if r.outcome is Outcome.NOT_RUN]
    if not_run:
        participle = "migrated" if verb == "migrate" else "downgraded"
        raise CliError(f"{len(not_run)} target(s) not {participle}: the run stopped at a failure")


def _run_with_progress(label: str, run: _Run, quiet: bool) -> Report:
    progress = Progress(
        TextColumn(label),
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
        return run(planned, done)


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


def _report_table(results: Sequence[Result], *, revisions: bool) -> Table:
    table = Table()
    for header in ("target", "kind", "store"):
        table.add_column(header, overflow="fold")  # squeezed: folded, never cut with "…"
    if revisions:
        table.add_column("from", no_wrap=True)
        table.add_column("to", no_wrap=True)
    for header in ("result", "seconds", "error"):
        table.add_column(header, overflow="fold")
    for r in results:
        ids = [r.before or "-", r.after or "-"] if revisions else []
        table.add_row(
            Text(r.target.label, style="bold"),
            r.target.kind.value,
            r.target.store,
            *ids,
            Text(r.outcome.value, style=_OUTCOME_STYLES[r.outcome]),
            f"{r.seconds:.2f}",
            Text(r.error or ""),
        )
    return table


def _print_report(report: Report, settled: str) -> None:
    """One row per target, or a summary for many; revision ids are always printed whole.

    When the ids do not fit in a row at the terminal's width, the table
    leaves them out and the lines under it say which targets went from
    which revision to which.
    """
    console = make_console()
    if len(report.results) > _SUMMARY_OVER:
        _print_summary(console, report)
    elif report.results:
        ordered = sorted(
            report.results, key=lambda r: (r.outcome is not Outcome.FAILED, r.target.label)
        )
        table = _report_table(ordered, revisions=True)
        roomy = console.options.update_width(10_000)  # unclamped: what the rows need
        if Measurement.get(console, roomy, table).minimum > console.width:
            table = _report_table(ordered, revisions=False)
            console.print(table)
            _print_transitions(console, report)
        else:
            console.print(table)
    counts = report.outcomes()
    parts = [f"{counts[o]} {o.value}" for o in Outcome if counts[o]]
    parts.append(f"{report.untouched} already {settled}")
    console.print(", ".join(parts), soft_wrap=True)


def _print_summary(console: Console, report: Report) -> None:
    """Many targets: how many went from which revision to which, and every failure in full."""
    console.print(f"{len(report.results)} target(s) run:", soft_wrap=True)
    _print_transitions(console, report)
    if report.failed:
        console.print("failed:", soft_wrap=True)
        for r in sorted(report.failed, key=lambda r: r.target.label):
            where = f"{r.target.kind.value} on {r.target.store}"
            console.print(f"  {r.target.label} ({where}): {r.error}", soft_wrap=True)


def _print_transitions(console: Console, report: Report) -> None:
    """Lines printed whole (``soft_wrap``): an id is never cut at the terminal's width."""
    for (before, after, outcome), count in sorted(
        report.transitions().items(), key=lambda kv: (-kv[1], str(kv[0]))
    ):
        console.print(
            f"  {count:>6}  {outcome.value:<10}  {before or '(none)'} -> {after or '(none)'}",
            soft_wrap=True,
        )


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
    table = Table("history")
    table.add_column("revision", overflow="fold")  # folded at worst, never cut
    table.add_column("head", overflow="fold")
    table.add_column("targets")
    table.add_column("tenants")
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
@click.pass_obj
def migrate_init(state: CliState, directory: Path) -> None:
    """Create DIR/tenant and DIR/global Alembic script directories.

    Then prints what to add to the configuration: only the two keys when
    the file already has a [tenantry] table (a second one is a TOML error).
    The file is not edited.
    """
    written = scaffold(directory)
    console = make_console()
    for path in written:
        console.print(f"wrote {path}")
    keys = {
        "tenant_migrations": str(directory / "tenant"),
        "global_migrations": str(directory / "global"),
    }
    lines = [f'{key} = "{value}"' for key, value in keys.items()]
    path = _config_file(state)
    section = _tenantry_section(path)
    if section is None:
        console.print(f"add to {path}:\n[tenantry]\n" + "\n".join(lines), soft_wrap=True)
        return
    already = [key for key in keys if key in section]
    note = f" (replacing its {', '.join(already)})" if already else ""
    console.print(
        f"add under the existing [tenantry] in {path}{note}:\n" + "\n".join(lines),
        soft_wrap=True,
    )


def _config_file(state: CliState) -> Path:
    """The file the configuration is read from (or would be)."""
    if state.config_path is not None:
        return state.config_path
    return Path(os.environ.get("TENANTRY_CONFIG") or CONFIG_FILE_NAME)


def _tenantry_section(path: Path) -> dict[str, object] | None:
    """The file's [tenantry] table (None: no file, no such table, or not readable TOML)."""
    try:
        parsed = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    section = parsed.get("tenantry")
    return section if isinstance(section, dict) else None


@migrate.command("revision")
@click.option("-m", "--message", required=True, help="What the revision does (its file name).")
@click.option(
    "--autogenerate",
    "autogenerate_",
    is_flag=True,
    help="Fill it in: what the models have that the reference's tables do not.",
)
@click.option("--global", "global_", is_flag=True, help="The global history (default: tenant).")
@click.option(
    "--reference",
    metavar="ID",
    help="Tenant whose tables the models are compared with (default: the first active one).",
)
@click.option("--rev-id", metavar="ID", help="Revision id to use instead of a random one.")
@click.pass_obj
def migrate_revision(
    state: CliState,
    message: str,
    autogenerate_: bool,
    global_: bool,
    reference: str | None,
    rev_id: str | None,
) -> None:
    """Write a new revision of the tenant (or --global) history.

    With --autogenerate the tenant models are compared with a reference
    tenant at head (--reference, else the first active tenant, else a
    scratch copy the history builds and throws away), with no schema in
    the operations: review the file, then run `tenantry migrate`.
    """
    kind: HistoryKind = "global" if global_ else "tenant"
    if reference is not None and not autogenerate_:
        raise CliUsageError("--reference only applies with --autogenerate")
    tenantry = state.tenantry()
    console = make_console()
    if not autogenerate_:
        path = blank_revision(tenantry, kind, message, rev_id=rev_id)
        console.print(f"wrote {path}: fill in upgrade() and downgrade()", soft_wrap=True)
        return
    named = tenantry.config.tenant_metadata if kind == "tenant" else tenantry.config.global_metadata
    if named is None and not (kind == "tenant" and state.models):
        # Without it the comparison would be with whatever models this process
        # happens to have imported (none, usually): say what to configure.
        hint = " (or pass --models MODULE:ATTR)" if kind == "tenant" else ""
        raise CliError(
            f"autogenerate compares your {kind} models with the database: set [tenantry] "
            f'{kind}_metadata = "module:attr" in the configuration{hint}'
        )
    generated = autogenerate(
        tenantry,
        kind,
        message,
        reference_id=None if reference is None else validate_tenant_id(reference),
        rev_id=rev_id,
    )
    if generated.path is None:
        console.print(
            f"no difference between the {kind} models and {generated.reference}: "
            "nothing was written",
            soft_wrap=True,
        )
        return
    console.print(
        f"wrote {generated.path} (revision {generated.revision}, compared with "
        f"{generated.reference}); review it, then run `tenantry migrate`",
        soft_wrap=True,
    )


@migrate.command("downgrade", context_settings={"ignore_unknown_options": True})
@click.argument("revision")
@click.option("--global", "global_", is_flag=True, help="The global tables (default: tenants).")
@_run_options("downgraded")
@click.option("--online", is_flag=True, help="Keep serving tenants while theirs runs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.pass_obj
def migrate_downgrade(
    state: CliState,
    revision: str,
    global_: bool,
    parallel: int,
    tenant_ids: tuple[str, ...],
    stores: tuple[str, ...],
    skip_failing: bool,
    online: bool,
    as_json: bool,
) -> None:
    """Take every tenant target (or --global: the global tables) down to REVISION.

    REVISION is a revision id, 'base', or -N: N steps below head, counted
    once for all targets. Resumable: each target goes down in one
    transaction, and a re-run leaves those already there alone.
    """
    migrator = Migrator(state.tenantry())
    ids = _filters(tenant_ids)

    def run(on_plan: Callable[[int], None], on_result: Callable[[Result], None]) -> Report:
        return migrator.downgrade(
            revision,
            global_=global_,
            tenant_ids=ids,
            stores=stores,
            parallel=parallel,
            skip_failing=skip_failing,
            online=online,
            on_plan=on_plan,
            on_result=on_result,
        )

    migrator.destination(revision, global_=global_)  # a bad REVISION before the progress bar
    _finish(state, _run_with_progress("downgrading", run, as_json), as_json, "downgrade")


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
    targets that already record a revision are left alone. A history with
    no revision yet has nothing to record: it is an error if that is all
    there is to stamp.
    """
    migrator = Migrator(state.tenantry())
    stamped = migrator.stamp_unrecorded(revision, tenant_ids=_filters(tenant_ids), stores=stores)
    console = make_console()
    console.print(f"stamped {len(stamped)} target(s)")
    if revision is None:
        for history in (migrator.tenant_history, migrator.global_history):
            if history is not None and history.head is None:
                console.print(
                    f"the {history.kind} history has no revision yet: nothing recorded for it",
                    soft_wrap=True,
                )

"""``tenantry queue``: look at the job queue without running a worker."""

from __future__ import annotations

from datetime import timedelta

import click
from rich.table import Table
from rich.text import Text

from tenantry.cli.output import echo_json, make_console
from tenantry.cli.state import CliState
from tenantry.queue import QueueAdmin
from tenantry.tenancy.ids import validate_tenant_id


@click.group("queue")
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
    stats = QueueAdmin(state.tenantry()).stats(
        tenant_id=tenant_id, window=timedelta(seconds=window)
    )
    if as_json:
        echo_json(stats.to_dict())
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

"""``tenantry worker``: run a worker in this process until it is signalled to stop."""

from __future__ import annotations

import asyncio

import click

from tenantry.cli.running import (
    concurrency_option,
    grace_option,
    leave_busy_threads_behind,
    load_registry,
    log_activity,
    poll_option,
    worker_options,
)
from tenantry.cli.state import CliState
from tenantry.queue import Queue, Worker
from tenantry.tenancy.ids import validate_tenant_id


@click.command()
@click.option(
    "--app",
    "app_ref",
    required=True,
    metavar="MODULE:REGISTRY",
    help="The application's JobRegistry, e.g. myapp.jobs:registry.",
)
@concurrency_option("Jobs run at the same time.")
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
@grace_option("Seconds running jobs get to finish after SIGTERM/SIGINT.")
@poll_option("Polling interval when no wake-up arrives.")
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
    registry = load_registry(app_ref)
    for tenant_id in tenant_ids:
        validate_tenant_id(tenant_id)
    options = worker_options(
        concurrency=concurrency,
        grace=grace,
        poll=poll,
        prefetch=prefetch,
        max_prefetch=max_prefetch,
        queues=queues,
        stores=stores,
        tenant_ids=tenant_ids,
        lease=lease,
        fair=fair,
    )
    log_activity()
    tenantry = state.tenantry()
    runner = Worker(tenantry, registry, options)
    Queue(tenantry, registry).setup()
    asyncio.run(runner.run(install_signals=True))
    leave_busy_threads_behind(runner)

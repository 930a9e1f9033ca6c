"""``tenantry queue``: look at and operate on the job queue without running a worker.

Every command goes through :class:`~tenantry.queue.admin.QueueAdmin`, the
operations layer the admin HTTP API and the dashboard use, with the same
filters and the same limits as the API's query parameters; so a job the API
would refuse to retry, the CLI refuses too, with the same reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.table import Table
from rich.text import Text

from tenantry.cli.output import confirm_destructive, echo_json, make_console
from tenantry.cli.state import CliState
from tenantry.errors import JobNotFoundError, JobStateError
from tenantry.queue import Job, JobState, QueueAdmin
from tenantry.queue.job import FINISHED_STATES
from tenantry.tenancy.ids import validate_tenant_id

if TYPE_CHECKING:
    _ParamType = click.ParamType[Any, Any]
else:  # click < 8.3 has no generic ParamType
    _ParamType = click.ParamType

_F = TypeVar("_F", bound=Callable[..., Any])

#: The admin API's bounds (``service/api/schemas.py``): page size, offset, text lengths.
MAX_LIMIT = 500
MAX_OFFSET = 100_000
MAX_KIND = 200
MAX_QUEUE = 100
#: Ten years, the longest delay or age the API accepts.
MAX_SECONDS = 10 * 365 * 86400.0
_JOB_ID = click.IntRange(1, 2**63 - 1)
_STATES = click.Choice([s.value for s in JobState], case_sensitive=False)
_FINISHED = click.Choice([s.value for s in FINISHED_STATES], case_sensitive=False)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
#: Dead jobs requeued per round when ``retry-dead --kind`` retries them one by one.
_RETRY_PAGE = 500


class Duration(_ParamType):
    """``90``, ``90s``, ``15m``, ``12h``, ``7d`` or ``2w``: a non-negative time span."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        match = _DURATION.match(str(value))
        if match is None:
            self.fail(f"{value!r} is not a duration (e.g. 90s, 15m, 12h, 7d, 2w)", param, ctx)
        seconds = float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()]
        if seconds > MAX_SECONDS:
            self.fail(f"{value!r} is longer than ten years", param, ctx)
        return timedelta(seconds=seconds)


def _bounded_text(limit: int) -> Any:
    def check(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is not None and (not value or len(value) > limit or "\x00" in value):
            raise click.BadParameter(f"must be 1 to {limit} characters, without NUL", param=param)
        return value

    return check


def _tenant(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else validate_tenant_id(value)


def _tenant_option(*, required: bool, help: str) -> Callable[[_F], _F]:
    return click.option(
        "--tenant", "tenant_id", metavar="ID", required=required, callback=_tenant, help=help
    )


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _error(entry: Any, *, traceback: bool) -> dict[str, Any]:
    data = entry if isinstance(entry, dict) else {"message": str(entry)}
    out = {k: data.get(k) for k in ("at", "attempt", "type", "message")}
    if traceback:
        out["traceback"] = data.get("traceback")
    return out


def job_dict(job: Job, *, full: bool = False) -> dict[str, Any]:
    """The job as the admin API shows it (its summary; *full*: payload and every error too)."""
    data: dict[str, Any] = {
        "id": job.id,
        "tenant_id": job.tenant_id,
        "queue": job.queue,
        "kind": job.kind,
        "state": job.state.value,
        "priority": job.priority,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "scheduled_at": _iso(job.scheduled_at),
        "created_at": _iso(job.created_at),
        "attempted_at": _iso(job.attempted_at),
        "finished_at": _iso(job.finished_at),
        "worker_id": job.worker_id,
        "idempotency_key": job.idempotency_key,
        "correlation_id": job.correlation_id,
        "error_count": len(job.errors),
        "last_error": _error(job.errors[-1], traceback=False) if job.errors else None,
    }
    if full:
        data["payload"] = job.payload
        data["lease_expires_at"] = _iso(job.lease_expires_at)
        data["errors"] = [_error(e, traceback=True) for e in job.errors]
    return data


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


_STATE_STYLES = {
    JobState.COMPLETED: "green",
    JobState.DEAD: "red",
    JobState.RETRYABLE: "yellow",
    JobState.RUNNING: "cyan",
    JobState.CANCELLED: "dim",
}


def _state_text(state: JobState) -> Text:
    return Text(state.value, style=_STATE_STYLES.get(state, ""))


def _last_error(job: Job) -> str:
    if not job.errors:
        return ""
    error = _error(job.errors[-1], traceback=False)
    text = ": ".join(str(error[k]) for k in ("type", "message") if error.get(k))
    return text if len(text) <= 60 else text[:59] + "…"


def _print_job(job: Job, as_json: bool) -> None:
    if as_json:
        echo_json(job_dict(job, full=True))
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("id", str(job.id))
    table.add_row("tenant", Text(job.tenant_id))
    table.add_row("kind", Text(job.kind))
    table.add_row("queue", Text(job.queue))
    table.add_row("state", _state_text(job.state))
    table.add_row("attempt", f"{job.attempt} of {job.max_attempts}")
    table.add_row("priority", str(job.priority))
    table.add_row("scheduled", _when(job.scheduled_at))
    table.add_row("created", _when(job.created_at))
    table.add_row("attempted", _when(job.attempted_at))
    table.add_row("finished", _when(job.finished_at))
    if job.worker_id:
        table.add_row("worker", Text(job.worker_id))
    if job.idempotency_key:
        table.add_row("idempotency key", Text(job.idempotency_key))
    if job.correlation_id:
        table.add_row("correlation id", Text(job.correlation_id))
    table.add_row("payload", Text(json.dumps(job.payload, sort_keys=True, default=str)))
    console = make_console()
    console.print(table)
    for entry in job.errors:
        error = _error(entry, traceback=True)
        console.print(
            f"attempt {error['attempt']} failed at {error['at']}: "
            f"{error['type']}: {error['message']}",
            style="red",
        )
        if error.get("traceback"):
            console.print(Text(str(error["traceback"]).rstrip()))


@click.group("queue")
def queue_group() -> None:
    """Inspect and operate on the job queue: list, show, retry, cancel, purge, prune."""


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


@queue_group.command("list")
@_tenant_option(required=False, help="Only this tenant's jobs (default: every tenant's).")
@click.option("--state", "state_name", type=_STATES, help="Only jobs in this state.")
@click.option("--kind", callback=_bounded_text(MAX_KIND), help="Only jobs of this kind.")
@click.option(
    "--queue", "queue_name", callback=_bounded_text(MAX_QUEUE), help="Only jobs on this queue."
)
@click.option(
    "--limit", default=50, show_default=True, type=click.IntRange(1, MAX_LIMIT), help="Jobs shown."
)
@click.option(
    "--offset",
    default=0,
    show_default=True,
    type=click.IntRange(0, MAX_OFFSET),
    help="Jobs skipped first (for the next page).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def list_jobs(
    state: CliState,
    tenant_id: str | None,
    state_name: str | None,
    kind: str | None,
    queue_name: str | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """Jobs newest first, across every tenant unless --tenant is given."""
    jobs = QueueAdmin(state.tenantry()).list_jobs(
        tenant_id=tenant_id,
        state=JobState(state_name.lower()) if state_name else None,
        kind=kind,
        queue=queue_name,
        limit=limit,
        offset=offset,
    )
    if as_json:
        echo_json([job_dict(job) for job in jobs])
        return
    console = make_console()
    if not jobs:
        console.print("no jobs")
        return
    table = Table(
        "id", "tenant", "kind", "queue", "state", "attempt", "scheduled (UTC)", "last error"
    )
    for job in jobs:
        table.add_row(
            Text(str(job.id), style="bold"),
            Text(job.tenant_id),
            Text(job.kind),
            Text(job.queue),
            _state_text(job.state),
            f"{job.attempt}/{job.max_attempts}",
            _when(job.scheduled_at),
            Text(_last_error(job), style="red"),
        )
    console.print(table)
    if len(jobs) == limit:
        console.print(f"(more may follow: --offset {offset + limit})", style="dim")


@queue_group.command("show")
@click.argument("job_id", metavar="JOB_ID", type=_JOB_ID)
@_tenant_option(required=True, help="The job's tenant (job ids are unique per tenant).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def show_job(state: CliState, job_id: int, tenant_id: str, as_json: bool) -> None:
    """A job with its payload and every failed attempt (message and traceback)."""
    _print_job(QueueAdmin(state.tenantry()).get_job(tenant_id, job_id), as_json)


@queue_group.command("retry")
@click.argument("job_id", metavar="JOB_ID", type=_JOB_ID)
@_tenant_option(required=True, help="The job's tenant.")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@click.pass_obj
def retry_job(state: CliState, job_id: int, tenant_id: str, as_json: bool) -> None:
    """Run a dead, cancelled or waiting job again now, with one more attempt allowed."""
    job = QueueAdmin(state.tenantry()).retry_job(tenant_id, job_id)
    if as_json:
        echo_json(job_dict(job, full=True))
        return
    make_console().print(
        f"job {job.id} of tenant {job.tenant_id!r} requeued ({job.state.value}; "
        f"{job.max_attempts - job.attempt} attempt(s) left)",
        style="green",
    )


@queue_group.command("cancel")
@click.argument("job_id", metavar="JOB_ID", type=_JOB_ID)
@_tenant_option(required=True, help="The job's tenant.")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@click.pass_obj
def cancel_job(state: CliState, job_id: int, tenant_id: str, as_json: bool) -> None:
    """Cancel an unfinished job (a running one keeps running, but its outcome is void)."""
    job = QueueAdmin(state.tenantry()).cancel_job(tenant_id, job_id)
    if as_json:
        echo_json(job_dict(job, full=True))
        return
    make_console().print(f"job {job.id} of tenant {job.tenant_id!r} cancelled", style="yellow")


def _retry_dead_of_kind(admin: QueueAdmin, tenant_id: str, kind: str) -> int:
    """Requeue one tenant's dead jobs of *kind* one by one (the bulk statement has no kind).

    A job that cannot be requeued (an unfinished job holds its idempotency
    key, or it changed meanwhile) stays dead and is skipped, as in
    :meth:`QueueAdmin.retry_dead`.
    """
    requeued = 0
    skipped: set[int] = set()
    while True:
        page = admin.list_jobs(
            tenant_id=tenant_id, state=JobState.DEAD, kind=kind, limit=_RETRY_PAGE + len(skipped)
        )
        dead = [job for job in page if job.id not in skipped]
        if not dead:
            return requeued
        for job in dead:
            try:
                admin.retry_job(tenant_id, job.id)
                requeued += 1
            except (JobStateError, JobNotFoundError):
                skipped.add(job.id)


def _reachable_tenants(admin: QueueAdmin) -> list[str]:
    """The catalog's tenants whose jobs this configuration can reach."""
    return sorted(t.id for _, members in admin.tenants_by_source().values() for t in members)


@queue_group.command("retry-dead")
@_tenant_option(required=False, help="Only this tenant's dead jobs (default: every tenant's).")
@click.option("--kind", callback=_bounded_text(MAX_KIND), help="Only dead jobs of this kind.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.pass_obj
def retry_dead(state: CliState, tenant_id: str | None, kind: str | None, as_json: bool) -> None:
    """Requeue dead jobs, each with one more attempt allowed; prints how many.

    A dead job whose idempotency key an unfinished job now holds stays dead.
    """
    admin = QueueAdmin(state.tenantry())
    tenant_ids = [tenant_id] if tenant_id is not None else _reachable_tenants(admin)
    counts: dict[str, int] = {}
    for tid in tenant_ids:
        counts[tid] = (
            admin.retry_dead(tid) if kind is None else _retry_dead_of_kind(admin, tid, kind)
        )
    total = sum(counts.values())
    if as_json:
        echo_json({"count": total, "tenants": counts})
        return
    of_kind = f" of kind {kind!r}" if kind else ""
    where = f" of tenant {tenant_id!r}" if tenant_id else f" across {len(counts)} tenant(s)"
    make_console().print(
        f"requeued {total} dead job(s){of_kind}{where}", style="green" if total else ""
    )


def _ago(span: timedelta) -> str:
    seconds = span.total_seconds()
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@queue_group.command("purge")
@_tenant_option(required=False, help="Only this tenant's jobs (default: every tenant's).")
@click.option(
    "--state",
    "state_names",
    multiple=True,
    type=_FINISHED,
    help="Only jobs in this finished state; repeatable (default: completed, dead, cancelled).",
)
@click.option(
    "--older-than",
    type=Duration(),
    metavar="DURATION",
    help="Only jobs finished longer ago than this (90s, 15m, 12h, 7d, 2w).",
)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the count as JSON.")
@click.pass_obj
def purge_jobs(
    state: CliState,
    tenant_id: str | None,
    state_names: Sequence[str],
    older_than: timedelta | None,
    yes: bool,
    as_json: bool,
) -> None:
    """Delete finished jobs now; asks first unless --yes. Unfinished jobs are never purged."""
    chosen = [JobState(s.lower()) for s in state_names] or list(FINISHED_STATES)
    tenantry = state.tenantry()
    if tenant_id is not None:
        tenantry.get_tenant(tenant_id)  # an unknown tenant is an error before the prompt
    what = (
        f"delete the {'/'.join(s.value for s in chosen)} jobs of "
        + (f"tenant {tenant_id!r}" if tenant_id else "every tenant")
        + (f" that finished over {_ago(older_than)} ago" if older_than else "")
    )
    confirm_destructive(what, yes=yes)
    deleted = QueueAdmin(tenantry).purge(tenant_id=tenant_id, states=chosen, older_than=older_than)
    if as_json:
        echo_json({"count": deleted})
        return
    make_console().print(f"purged {deleted} finished job(s)", style="green")


@queue_group.command("prune")
@click.option(
    "--older-than",
    type=Duration(),
    default="7d",
    show_default=True,
    metavar="DURATION",
    help="Delete jobs that finished longer ago than this (90s, 15m, 12h, 7d, 2w).",
)
@click.option(
    "--batch-size",
    default=1000,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Jobs deleted per transaction.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the count as JSON.")
@click.pass_obj
def prune_jobs(state: CliState, older_than: timedelta, batch_size: int, as_json: bool) -> None:
    """Retention: delete old finished jobs of every tenant in short batches (for cron).

    Unlike purge it never asks: each batch is its own short transaction, so
    it is safe to run on a schedule against a busy queue.
    """
    deleted = QueueAdmin(state.tenantry()).prune(older_than, batch_size=batch_size)
    if as_json:
        echo_json({"count": deleted})
        return
    make_console().print(
        f"pruned {deleted} job(s) finished over {_ago(older_than)} ago",
        style="green" if deleted else "",
    )

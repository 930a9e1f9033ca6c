"""Letting the pause take hold everywhere before the delta is taken."""

from __future__ import annotations

import time

from sqlalchemy import Engine, func, select, text

from tenantry.backoff import ExponentialBackoff
from tenantry.errors import MoveError
from tenantry.queue.job import JobState
from tenantry.queue.schema import jobs_table
from tenantry.queue.sources import source_of
from tenantry.tenancy.catalog import Tenant
from tenantry.tenancy.facade import Tenancy
from tenantry.tenancy.logs import get_logger

log = get_logger(__name__)

#: Polls for the tenant's running jobs: soon at first (most pauses find none or
#: short ones), then no more often than a job can be expected to end.
_JOBS_POLL = ExponentialBackoff(0.05, 0.2)
#: Polls for transactions begun before the pause: the pause lasts until they end.
_SETTLE_POLL = ExponentialBackoff(0.05, 0.05)

#: Client transactions on this database, other than ours, begun before *since*. Other
#: roles' transactions are visible to a superuser or a member of pg_read_all_stats only.
_OPEN_BEFORE = text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND xact_start < :since"
)


def drain(tenantry: Tenancy, tenant: Tenant, timeout: float) -> None:
    """Wait until nothing can still write to the paused tenant's old copy.

    Other processes serve from their catalog cache for up to its TTL (or,
    where catalog changes are pushed, until the pause's notification reaches
    them: :meth:`~tenantry.tenancy.facade.Tenancy.catalog_staleness`), and a
    job claimed before the pause runs to its end: its result must be in the
    copy, not lost with the old one. Then, on PostgreSQL, transactions that
    began before that are waited for (a session opened just before the pause
    may still commit): what they write must be in the delta's snapshot.
    """
    stale = tenantry.catalog_staleness()  # the TTL, or far less where changes are pushed
    deadline = time.monotonic() + max(timeout, stale)
    time.sleep(stale)
    source = source_of(tenant, tenantry.store(tenant.store))
    engine = source.engine(write=False)
    polls = 0
    while True:
        with engine.connect() as conn:
            running = conn.execute(
                select(func.count()).where(
                    jobs_table.c.tenant_id == tenant.id,
                    jobs_table.c.state == JobState.RUNNING.value,
                )
            ).scalar_one()
        if not running:
            break
        if time.monotonic() > deadline:
            raise MoveError(
                f"tenant {tenant.id!r} still has {running} running job(s) after {timeout:.0f} s; "
                "run the move again later (it resumes) or abort it"
            )
        time.sleep(_JOBS_POLL.delay(polls))
        polls += 1
    if tenantry.store(tenant.store).is_postgres:
        _settle(engine, tenant, deadline)


def _settle(engine: Engine, tenant: Tenant, deadline: float) -> None:
    """Wait (until *deadline*) for the transactions open on the tenant's database to end.

    They may belong to other tenants of a shared database: past the deadline
    the move goes on, with a warning, rather than wait for them forever.
    """
    with engine.connect() as conn:
        since = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    polls = 0
    while True:
        with engine.connect() as conn:
            still = conn.execute(_OPEN_BEFORE, {"since": since}).scalar_one()
        if not still:
            return
        if time.monotonic() > deadline:
            log.warning(
                "tenant %s: %d transaction(s) begun before the pause are still open on its "
                "database; going on (a write of this tenant they commit from now on would not "
                "be in the copy)",
                tenant.id,
                still,
            )
            return
        time.sleep(_SETTLE_POLL.delay(polls))
        polls += 1

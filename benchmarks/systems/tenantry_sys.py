"""tenantry, driven through its public API only (run with the project's .venv).

Profiles: ``10`` is one worker at 10 slots (the common setting); ``best`` is
the setting that gave the highest no-op throughput here (see
docs/performance.md). Extra commands used only by the tenantry-only figures:

    python tenantry_sys.py setup DSN --tenants N     # N shared tenants as well
    python tenantry_sys.py fill  DSN --jobs N        # N finished + N future rows (SQL)
    python tenantry_sys.py bulk  DSN --jobs N --tenants K   # spread over K tenants
    python tenantry_sys.py bulk  DSN --jobs N --kind tx     # transactional handler jobs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, Session, mapped_column

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RECORDER, main

from tenantry import (
    JobContext,
    JobRegistry,
    Queue,
    TenantBase,
    Tenantry,
    TenantryConfig,
    Worker,
    tenant_context,
)
from tenantry.queue import WorkerOptions

BENCH_TENANT = "bench"
#: Worker settings per profile (keyword arguments of ``Worker``).
PROFILES: dict[str, dict[str, Any]] = {
    "10": {"concurrency": 10},
    # Highest no-op throughput in sweeps here (concurrency 10-300, prefetch
    # 10-1200, fair on/off; docs/performance.md); one tenant, so fair
    # claiming buys nothing. Larger batches: fewer claim rounds, each of
    # which costs a commit and several round trips whatever its size.
    # freeze_gc as ``tenantry worker`` sets it (its process runs the worker).
    "best": {"concurrency": 100, "prefetch": 800, "fair": False, "freeze_gc": True},
    # For tuning: WorkerOptions fields as JSON in TENANTRY_BENCH_WORKER_OPTS.
    "custom": json.loads(os.environ.get("TENANTRY_BENCH_WORKER_OPTS", "{}")),
}


class BenchRow(TenantBase):
    """The row a transactional job writes (a tenant table, like an application's)."""

    __tablename__ = "bench_tx_rows"

    id: Mapped[int] = mapped_column(primary_key=True)
    n: Mapped[int]


@dataclass
class Noop:
    n: int
    sent: float = 0.0


registry = JobRegistry()


@registry.handler("noop")
async def noop(ctx: JobContext, payload: Noop) -> None:
    RECORDER.started(payload.sent)


@registry.handler("tx", transactional=True)
async def tx(ctx: JobContext, payload: Noop) -> None:
    """Writes one row in the transaction that also marks the job completed."""
    RECORDER.started(payload.sent)
    session: AsyncSession = ctx.session
    session.add(BenchRow(n=payload.n))
    await session.flush()


def tenant_ids(k: int) -> list[str]:
    return [f"t{i:05d}" for i in range(k)] if k else [BENCH_TENANT]


def _build(dsn: str) -> Tenantry:
    return Tenantry(TenantryConfig.single(dsn))


class TenantrySystem:
    name = "tenantry"

    async def setup(self, dsn: str, args: argparse.Namespace) -> None:
        t = _build(dsn)
        try:
            t.create_tenant(BENCH_TENANT)
            for tenant_id in tenant_ids(args.tenants) if args.tenants else []:
                t.create_tenant(tenant_id)
            Queue(t, registry).setup()
        finally:
            t.close()

    async def bulk(
        self, dsn: str, n: int, args: argparse.Namespace
    ) -> Callable[[], Awaitable[Any]]:
        t = _build(dsn)
        queue = Queue(t, registry)
        tenants = tenant_ids(args.tenants)
        per = -(-n // len(tenants))
        payloads = [Noop(i) for i in range(n)]
        queue.warm(tenants)  # connect and load the catalog before the clock starts

        async def timed() -> None:
            try:
                if len(tenants) == 1:
                    with tenant_context(tenants[0]):
                        queue.enqueue_many(args.kind, payloads)
                    return
                # Many tenants: one enqueue_many per tenant, all in one transaction, on
                # an admin connection (the jobs table's policy admits a session login's
                # writes only for the tenant its transaction is bound to).
                with Session(t.default_store.admin_engine()) as s:
                    conn = s.connection()
                    for i, tenant_id in enumerate(tenants):
                        with tenant_context(tenant_id):
                            queue.enqueue_many(
                                args.kind, payloads[i * per : (i + 1) * per], connection=conn
                            )
                    s.commit()
            finally:
                t.close()

        return timed

    async def single(
        self, dsn: str, args: argparse.Namespace
    ) -> tuple[Callable[[int, float], Awaitable[Any]], Callable[[], Awaitable[Any]]]:
        t = _build(dsn)
        queue = Queue(t, registry)
        tenants = tenant_ids(args.tenants)
        queue.warm(tenants)

        async def enqueue(i: int, sent: float) -> None:
            with tenant_context(tenants[i % len(tenants)]):
                queue.enqueue(args.kind, Noop(i, sent))

        async def close() -> None:
            t.close()

        return enqueue, close

    async def work(
        self, dsn: str, profile: str, ready: Callable[[], None], stop: asyncio.Event
    ) -> None:
        t = _build(dsn)
        worker = Worker(t, registry, WorkerOptions(**PROFILES[profile]))
        task = asyncio.create_task(worker.run())
        await worker.wait_started()
        ready()
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        worker.stop()
        try:
            await task
        finally:
            waiter.cancel()
            t.close()


def fill(dsn: str, n: int) -> None:
    """N completed and N future-scheduled rows for the bench tenant, by plain SQL."""
    t = _build(dsn)
    try:
        common = (
            "INSERT INTO tenantry.tenantry_jobs (tenant_id, queue, kind, payload, priority,"
            " state, attempt, max_attempts, scheduled_at, attempted_at, finished_at, errors,"
            " created_at) SELECT 'bench', 'default', 'filler', jsonb_build_object('n', g), 0,"
        )
        # As the admin: the jobs table's policy keeps the session login to bound tenants.
        with Session(t.default_store.admin_engine()) as s:
            s.execute(
                text(
                    common + " 'completed', 1, 3, now() - interval '1 day',"
                    " now() - interval '1 day', now() - interval '1 day', '[]'::jsonb,"
                    " now() - interval '1 day' FROM generate_series(1, :n) g"
                ),
                {"n": n},
            )
            s.execute(
                text(
                    common + " 'scheduled', 0, 3, now() + interval '30 days', NULL, NULL,"
                    " '[]'::jsonb, now() FROM generate_series(1, :n) g"
                ),
                {"n": n},
            )
            s.commit()
        with t.default_store.admin_engine().connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                text("VACUUM ANALYZE tenantry.tenantry_jobs")
            )
    finally:
        t.close()


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "fill":
        parser = argparse.ArgumentParser()
        parser.add_argument("command")
        parser.add_argument("dsn")
        parser.add_argument("--jobs", type=int, required=True)
        parser.add_argument("--profile")  # accepted like every command, unused
        a = parser.parse_args()
        fill(a.dsn, a.jobs)
        sys.exit(0)
    sys.exit(main(TenantrySystem(), list(PROFILES)))

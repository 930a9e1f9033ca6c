"""No-op processing throughput of one tenantry worker process.

    .venv/bin/python benchmarks/queue_noop.py [--jobs 20000] [--concurrency 10] [--url URL]

Creates a throwaway PostgreSQL database (default server: TENANTRY_BENCH_PG_URL or
postgres@127.0.0.1:5432), bulk-enqueues no-op jobs for one shared tenant, runs
one in-process Worker until every job is completed, verifies the count in the
database, and prints a table. SQLite is measured too unless --no-sqlite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url

from tenantry import (
    JobContext,
    JobRegistry,
    Queue,
    Tenantry,
    TenantryConfig,
    Worker,
    tenant_context,
)
from tenantry.queue import WorkerOptions


@dataclass
class Noop:
    n: int


registry = JobRegistry()


@registry.handler("noop")
async def noop(ctx: JobContext, payload: Noop) -> None:
    return None


def _admin(url: str) -> psycopg.Connection[Any]:
    u = make_url(url)
    return psycopg.connect(
        host=u.host, port=u.port or 5432, user=u.username, dbname="postgres", autocommit=True
    )


async def _drain(t: Tenantry, total: int, concurrency: int) -> tuple[float, dict[str, int]]:
    worker = Worker(t, registry, WorkerOptions(concurrency=concurrency, poll_interval=0.05))
    queue = Queue(t, registry)
    task = asyncio.create_task(worker.run())
    await worker.wait_started()
    start = time.perf_counter()
    while worker.stats.completed < total:
        await asyncio.sleep(0.01)
        if task.done():
            task.result()
    elapsed = time.perf_counter() - start
    worker.stop()
    await task
    return elapsed, queue.admin.count_jobs()


def run_one(url: str, jobs: int, concurrency: int) -> dict[str, Any]:
    t = Tenantry(TenantryConfig.single(url))
    t.create_tenant("bench")
    queue = Queue(t, registry)
    queue.setup()
    with tenant_context("bench"):
        start = time.perf_counter()
        for i in range(0, jobs, 5000):
            queue.enqueue_many("noop", [Noop(n) for n in range(i, min(jobs, i + 5000))])
        enqueue_s = time.perf_counter() - start
    elapsed, counts = asyncio.run(_drain(t, jobs, concurrency))
    t.close()
    ok = counts["completed"] == jobs and sum(counts.values()) == jobs
    return {
        "enqueue_rate": jobs / enqueue_s,
        "rate": jobs / elapsed,
        "seconds": elapsed,
        "verified": ok,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "TENANTRY_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--no-sqlite", action="store_true")
    args = parser.parse_args()

    results: list[tuple[str, dict[str, Any]]] = []
    db = f"tbench_{uuid.uuid4().hex[:8]}"
    with _admin(args.url) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    try:
        pg_url = make_url(args.url).set(drivername="postgresql+psycopg", database=db)
        results.append(
            ("PostgreSQL", run_one(pg_url.render_as_string(False), args.jobs, args.concurrency))
        )
    finally:
        with _admin(args.url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    if not args.no_sqlite:
        tmp = tempfile.mkdtemp(prefix="tbench")
        try:
            results.append(
                ("SQLite", run_one(f"sqlite:///{tmp}/bench.db", args.jobs, args.concurrency))
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    table = Table(
        title=f"tenantry no-op queue, {args.jobs} jobs, "
        f"one worker process, {args.concurrency} slots"
    )
    for col in ("database", "bulk enqueue jobs/s", "processing jobs/s", "seconds", "verified"):
        table.add_column(col, justify="right")
    for name, r in results:
        table.add_row(
            name,
            f"{r['enqueue_rate']:,.0f}",
            f"{r['rate']:,.0f}",
            f"{r['seconds']:.2f}",
            "yes" if r["verified"] else "NO",
        )
    Console().print(table)
    return 0 if all(r["verified"] for _, r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

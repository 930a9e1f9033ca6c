"""Tenant lifecycle on PostgreSQL: migrating many schema tenants, and provisioning one.

    .venv/bin/python benchmarks/tenant_lifecycle.py          # 1,000 schema tenants
    .venv/bin/python benchmarks/tenant_lifecycle.py --ci     # 100, same targets

**Migrations.** N schema tenants (1,000; 100 with ``--ci``), each with 50 rows
in an ``items`` table. Revision ``m1`` adds a column and an index on it and is
applied with ``--parallel 1``; revision ``m2`` (the same shape, another
column) with ``--parallel 8``. Tenants are taken out of service and put back
(the default, not ``--online``). Then a no-op run (every tenant at head) is
timed as a new process would do it: history loaded, catalog listed, every
version read. Target (exit status 1 if missed): the no-op run under 10 s for
1,000 tenants.

**Provisioning.** ``create_tenant`` of schema tenants with 30 tables each
(200; 50 with ``--ci``), timed one by one: p50 and p99. For comparison, the
step-by-step path (``create_all(checkfirst=True)``, which tenantry still uses
to resume an interrupted provisioning) and the compiled script, storage only
(no catalog), on 20 schemas each.

**Moving.** A schema tenant with 100,000 rows and 10,000 pending jobs
(10,000 and 1,000 with ``--ci``) moved to database mode on a second store on
a second PostgreSQL server that the benchmark starts (``tests/pgcluster.py``;
another database of the same server if no server binaries are usable): total time and
the pause window (sessions refused, jobs waiting), with ``catalog_cache_ttl``
at 1 s (the drain waits that long). A writer thread inserts, updates and
deletes rows through tenant sessions from the start of the move (it is
refused during the pause and retries); the run is verified only if every
write it committed is in the new copy and nothing else changed.
``--only-move`` runs just this part.

Every run is verified in the database: each tenant's columns and indexes, and
each version table at head, or the run is reported as failed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table
from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    Numeric,
    String,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy import Table as SaTable
from sqlalchemy.engine import make_url

from tenantry import Tenantry, TenantryConfig
from tenantry.lifecycle.migrations.runner import Migrator, Outcome
from tenantry.lifecycle.migrations.scaffold import scaffold
from tenantry.tenancy.isolation import strategy_for
from tenantry.tenancy.models import tenant_metadata

ROWS_PER_TENANT = 50
PROVISION_TABLES = 30


def _admin(url: str) -> psycopg.Connection[Any]:
    u = make_url(url)
    return psycopg.connect(
        host=u.host, port=u.port or 5432, user=u.username, dbname="postgres", autocommit=True
    )


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    db = f"tlife_{uuid.uuid4().hex[:8]}"
    with _admin(server_url) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    try:
        yield (
            make_url(server_url)
            .set(drivername="postgresql+psycopg", database=db)
            .render_as_string(False)
        )
    finally:
        with _admin(server_url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def items_metadata() -> MetaData:
    metadata = tenant_metadata()
    SaTable(
        "items",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("tenant_id", String(40), nullable=False, index=True),
        Column("name", String(100), nullable=False),
    )
    return metadata


def wide_metadata() -> MetaData:
    metadata = tenant_metadata()
    previous: SaTable | None = None
    for i in range(PROVISION_TABLES):
        columns: list[Any] = [
            Column("id", Integer, primary_key=True),
            Column("tenant_id", String(40), nullable=False, index=True),
            Column("name", String(100), nullable=False),
            Column("amount", Numeric(12, 2)),
            Column("created_at", DateTime(timezone=True), server_default=func.now()),
        ]
        if previous is not None:
            columns.append(Column("parent_id", ForeignKey(previous.c.id)))
        previous = SaTable(f"t{i:02d}", metadata, *columns)
    return metadata


def write_revision(history: Path, rev: str, down: str | None, column: str) -> None:
    (history / "versions" / f"{rev}.py").write_text(
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        f"revision = {rev!r}\ndown_revision = {down!r}\n\n\n"
        "def upgrade() -> None:\n"
        f"    op.add_column('items', sa.Column('{column}', sa.String(20), nullable=True))\n"
        f"    op.create_index('ix_items_{column}', 'items', ['{column}'])\n\n\n"
        "def downgrade() -> None:\n    pass\n"
    )


def build(url: str, history: Path, metadata: MetaData) -> Tenantry:
    config = replace(TenantryConfig.single(url), tenant_migrations=str(history))
    return Tenantry(config, tenant_metadata=metadata)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def columns_everywhere(url: str, column: str, n: int) -> bool:
    """Every tenant schema has the column and its index (read from the server's catalog)."""
    u = make_url(url)
    with psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, dbname=u.database) as c:
        cols = c.execute(
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_schema LIKE 't\\_%%' AND table_name = 'items' AND column_name = %s",
            (column,),
        ).fetchone()
        idx = c.execute(
            "SELECT count(*) FROM pg_indexes WHERE schemaname LIKE 't\\_%%' AND indexname = %s",
            (f"ix_items_{column}",),
        ).fetchone()
    return cols is not None and idx is not None and cols[0] == n and idx[0] == n


def migrations(server_url: str, n: int, console: Console) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="tlife_"))
    try:
        scaffold(workdir)
        history = workdir / "tenant"
        with fresh_database(server_url) as url:
            t = build(url, history, items_metadata())
            started = time.perf_counter()
            for i in range(n):
                tid = f"t{i:05d}"
                t.create_tenant(tid, isolation="schema")
                with t.default_store.admin_engine().begin() as conn:
                    conn.execute(
                        text(
                            f'INSERT INTO "t_{tid}".items (tenant_id, name) '
                            "SELECT :t, 'item ' || g FROM generate_series(1, :n) g"
                        ),
                        {"t": tid, "n": ROWS_PER_TENANT},
                    )
            setup = time.perf_counter() - started
            t.close()
            console.print(f"  {n} schema tenants created in {setup:.1f} s")
            runs: dict[str, Any] = {"setup": setup}
            for rev, down, column, parallel in (("m1", None, "c1", 1), ("m2", "m1", "c2", 8)):
                write_revision(history, rev, down, column)
                deployed = build(url, history, items_metadata())
                started = time.perf_counter()
                report = Migrator(deployed).run(parallel=parallel)
                elapsed = time.perf_counter() - started
                upgraded = sum(r.outcome is Outcome.UPGRADED for r in report.results)
                ok = upgraded == n and not report.failed and columns_everywhere(url, column, n)
                runs[f"p{parallel}"] = (elapsed, ok)
                console.print(
                    f"  {rev} with --parallel {parallel}: {elapsed:.1f} s (verified: {ok})"
                )
                deployed.close()
            noop = build(url, history, items_metadata())  # a new process: nothing loaded yet
            started = time.perf_counter()
            report = Migrator(noop).run(parallel=8)
            elapsed = time.perf_counter() - started
            versions = Migrator(noop).versions(Migrator(noop).targets())
            ok = not report.results and all(v.revision == "m2" for v in versions)
            runs["noop"] = (elapsed, ok)
            console.print(f"  no-op run: {elapsed:.2f} s (verified: {ok})")
            noop.close()
            return runs
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def provisioning(server_url: str, n: int, console: Console) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="tlife_"))
    try:
        scaffold(workdir)
        history = workdir / "tenant"
        (history / "versions" / "w1.py").write_text(
            "revision = 'w1'\ndown_revision = None\n\n\ndef upgrade() -> None:\n    pass\n"
        )
        with fresh_database(server_url) as url:
            t = build(url, history, wide_metadata())
            t.create_tenant("warmup", isolation="schema")  # once per process and store
            times = []
            for i in range(n):
                started = time.perf_counter()
                t.create_tenant(f"p{i:05d}", isolation="schema")
                times.append(time.perf_counter() - started)
            strategy = strategy_for("schema")
            script, slow = [], []
            for i in range(20):
                started = time.perf_counter()
                strategy.provision(
                    t.default_store, f"f{i:05d}", t.tenant_metadata, history=t.tenant_history
                )
                script.append(time.perf_counter() - started)
                with t.default_store.admin_engine().begin() as conn:
                    conn.execute(text(f'CREATE SCHEMA "t_s{i:05d}"'))
                started = time.perf_counter()
                strategy.provision(
                    t.default_store, f"s{i:05d}", t.tenant_metadata, history=t.tenant_history
                )
                slow.append(time.perf_counter() - started)
            with t.default_store.admin_engine().connect() as conn:
                tables = conn.execute(
                    text(
                        "SELECT count(*) FROM pg_tables WHERE schemaname LIKE 't\\_p%' "
                        "AND tablename <> 'tenantry_tenant_version'"
                    )
                ).scalar_one()
                stamped = conn.execute(
                    text(
                        "SELECT count(*) FROM pg_tables WHERE schemaname LIKE 't\\_p%' "
                        "AND tablename = 'tenantry_tenant_version'"
                    )
                ).scalar_one()
            t.close()
            ok = tables == n * PROVISION_TABLES and stamped == n
            return {"times": times, "script": script, "slow": slow, "ok": ok}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def second_server(server_url: str) -> Iterator[tuple[str, str]]:
    """A database on a second PostgreSQL server started for the run (tests/pgcluster.py),
    or, when no server binaries can be run here, a second database on the first server."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo's tests/
    from tests.pgcluster import PgCluster, PgClusterUnavailable

    try:
        cluster = PgCluster()
        cluster.start()
    except (PgClusterUnavailable, RuntimeError) as exc:
        print(f"  (no second server: {exc}; moving to a database of the same server)")
        with fresh_database(server_url) as url:
            yield url, "another database of the same server"
        return
    try:
        yield cluster.create_database("tlife_eu"), "a second server (fsync=off)"
    finally:
        cluster.destroy()


class Writer:
    """The tenant's application, writing while the move runs: inserts, updates and deletes.

    It keeps what it committed (by id) so that the benchmark can check that
    every write made during the bulk copy reached the new copy. Writes are
    refused during the pause (``TenantMovingError``): it waits and retries.
    """

    def __init__(self, t: Tenantry, table: SaTable, rows: int) -> None:
        self.t, self.table, self.rows = t, table, rows
        self.inserted: dict[int, str] = {}
        self.updated: dict[int, str] = {}
        self.deleted: set[int] = set()
        self.refused = 0
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from tenantry import tenant_context
        from tenantry.errors import TenantMovingError

        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                with tenant_context("big"), self.t.session() as s:
                    name = f"written {n}"
                    new_id = s.execute(
                        insert(self.table)
                        .values(tenant_id="big", name=name)
                        .returning(self.table.c.id)
                    ).scalar_one()
                    target = 1 + (n * 7919) % self.rows  # one of the seeded rows
                    s.execute(
                        update(self.table)
                        .where(self.table.c.id == target)
                        .values(name=f"updated {n}")
                    )
                    gone = 1 + (n * 104729 + 13) % self.rows
                    s.execute(delete(self.table).where(self.table.c.id == gone))
                    s.commit()
                self.inserted[new_id] = name
                if target not in self.deleted:
                    self.updated[target] = f"updated {n}"
                self.deleted.add(gone)
                self.updated.pop(gone, None)
            except TenantMovingError:
                self.refused += 1
                self.stop.wait(0.05)
            except BaseException as exc:
                self.errors.append(exc)
                return
            self.stop.wait(0.002)

    def arrived(self, engine: Any) -> bool:
        """Every committed write is in the new copy (and the rest is as seeded)."""
        with engine.connect() as conn:
            found = dict(conn.execute(select(self.table.c.id, self.table.c.name)).tuples().all())
        expected = {i: f"item {i}" for i in range(1, self.rows + 1)}
        expected.update(self.updated)
        for gone in self.deleted:
            expected.pop(gone, None)
        expected.update(self.inserted)
        return found == expected


def moving(server_url: str, rows: int, jobs: int, console: Console) -> dict[str, Any]:
    from tenantry import JobRegistry, Queue, StoreConfig, tenant_context
    from tenantry.lifecycle.move import move_tenant

    registry = JobRegistry()

    @registry.handler("noop")
    def noop(ctx: Any, payload: dict[str, int]) -> None:
        return None

    with fresh_database(server_url) as main_url, second_server(server_url) as (other_url, where):
        config = TenantryConfig(
            stores={
                "default": StoreConfig("default", main_url),
                "other": StoreConfig("other", other_url),
            },
            catalog_cache_ttl=1.0,
        )
        metadata = items_metadata()
        t = Tenantry(config, tenant_metadata=metadata)
        t.create_tenant("big", isolation="schema")
        with t.default_store.admin_engine().begin() as conn:
            conn.execute(
                text(
                    'INSERT INTO "t_big".items (tenant_id, name) '
                    "SELECT 'big', 'item ' || g FROM generate_series(1, :n) g"
                ),
                {"n": rows},
            )
        with tenant_context("big"):
            Queue(t, registry).enqueue_many("noop", [{"n": i} for i in range(jobs)])
        items = next(table for table in metadata.sorted_tables if table.name == "items")
        writer = Writer(t, items, rows)
        phases: dict[str, float] = {}

        def mark(step: str) -> None:
            phases[step] = time.perf_counter()
            if step == "started":
                writer.thread.start()

        started = time.perf_counter()
        try:
            result = move_tenant(t, "big", to_store="other", isolation="database", after_step=mark)
        finally:
            writer.stop.set()
            writer.thread.join()
        total = time.perf_counter() - started
        engine = t.store("other").tenant_admin_engine("big")
        arrived = writer.arrived(engine)
        with engine.connect() as conn:
            moved_jobs = conn.execute(
                text("SELECT count(*) FROM tenantry.tenantry_jobs WHERE state = 'available'")
            ).scalar_one()
        engine.dispose()
        with t.default_store.admin_engine().connect() as conn:
            left = conn.execute(
                text("SELECT count(*) FROM pg_namespace WHERE nspname = 't_big'")
            ).scalar_one()
            left_jobs = conn.execute(
                text("SELECT count(*) FROM tenantry.tenantry_jobs WHERE tenant_id = 'big'")
            ).scalar_one()
        t.close()
        writes = len(writer.inserted)
        ok = (
            arrived
            and not writer.errors
            and writes > 0
            and moved_jobs == jobs
            and left == 0
            and left_jobs == 0
            and result.jobs == jobs
        )
        bulk = phases["bulk-copied"] - phases["started"]
        names = list(phases)
        steps = ", ".join(f"{b} +{phases[b] - phases[a]:.2f}" for a, b in itertools.pairwise(names))
        console.print(
            f"  moved to {where} in {total:.1f} s (bulk copy {bulk:.1f} s while served, "
            f"{writes} write transactions meanwhile), paused {result.pause_seconds:.1f} s "
            f"for {result.delta_rows} changed row(s) and {result.jobs} job(s) "
            f"(verified: {ok}{'; ' + repr(writer.errors[0]) if writer.errors else ''})"
        )
        console.print(f"  seconds per step: {steps} (the drain is in delta-copied)")
        return {
            "total": total,
            "pause": result.pause_seconds,
            "bulk": bulk,
            "writes": writes,
            "delta": result.delta_rows,
            "ok": ok,
            "where": where,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--ci", action="store_true", help="reduced sizes (same targets)")
    parser.add_argument("--only-move", action="store_true", help="run only the move")
    parser.add_argument("--tenants", type=int, help="schema tenants to migrate (default 1000)")
    parser.add_argument("--provision", type=int, help="tenants to provision (default 200)")
    parser.add_argument("--move-rows", type=int, help="rows of the moved tenant (default 100000)")
    parser.add_argument("--move-jobs", type=int, help="jobs of the moved tenant (default 10000)")
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "TENANTRY_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    n = args.tenants or (100 if args.ci else 1000)
    k = args.provision or (50 if args.ci else 200)
    move_rows = args.move_rows or (10_000 if args.ci else 100_000)
    move_jobs = args.move_jobs or (1_000 if args.ci else 10_000)
    console = Console()

    console.print(f"moving: a schema tenant with {move_rows:,} rows and {move_jobs:,} jobs")
    moved = moving(args.url, move_rows, move_jobs, console)
    if args.only_move:
        return 0 if moved["ok"] else 1
    console.print(f"migrations: {n} schema tenants, {ROWS_PER_TENANT} rows each")
    runs = migrations(args.url, n, console)
    console.print(f"provisioning: {k} schema tenants with {PROVISION_TABLES} tables")
    prov = provisioning(args.url, k, console)

    table = Table(title=f"Tenant lifecycle (PostgreSQL, {n} schema tenants)")
    for col in ("measure", "value", "verified"):
        table.add_column(col, justify="right")
    p1, ok1 = runs["p1"]
    p8, ok8 = runs["p8"]
    noop, ok_noop = runs["noop"]
    table.add_row(
        "migrate: add column + index, --parallel 1", f"{p1:.1f} s", "yes" if ok1 else "NO"
    )
    table.add_row(
        "migrate: add column + index, --parallel 8", f"{p8:.1f} s", "yes" if ok8 else "NO"
    )
    table.add_row(
        "migrate: per tenant, --parallel 1 / 8", f"{p1 / n * 1000:.1f} / {p8 / n * 1000:.1f} ms", ""
    )
    table.add_row(
        "migrate: no-op re-run (all at head)", f"{noop:.2f} s", "yes" if ok_noop else "NO"
    )
    times = prov["times"]
    table.add_row(
        f"provision ({PROVISION_TABLES} tables): p50 / p99",
        f"{pct(times, 50) * 1000:.0f} / {pct(times, 99) * 1000:.0f} ms",
        "yes" if prov["ok"] else "NO",
    )
    for label, key in (
        ("  storage only, compiled script", "script"),
        ("  storage only, step by step (create_all)", "slow"),
    ):
        values = prov[key]
        table.add_row(label, f"{pct(values, 50) * 1000:.0f} / {pct(values, 99) * 1000:.0f} ms", "")
    table.add_row(
        f"move {move_rows:,} rows + {move_jobs:,} jobs to {moved['where']}: total / pause",
        f"{moved['total']:.1f} / {moved['pause']:.1f} s",
        "yes" if moved["ok"] else "NO",
    )
    table.add_row(
        "  bulk copy while served / writes meanwhile / rows changed in the pause",
        f"{moved['bulk']:.1f} s / {moved['writes']} / {moved['delta']}",
        "",
    )
    console.print(table)

    limit = 10.0 * n / 1000
    targets = [
        (f"no-op run under {limit:.1f} s for {n} tenants", noop < limit, f"{noop:.2f} s"),
        ("every run verified", ok1 and ok8 and ok_noop and prov["ok"] and moved["ok"], ""),
    ]
    failed = False
    for name, passed, detail in targets:
        console.print(f"{'PASS' if passed else 'FAIL'}  {name} {detail}")
        failed |= not passed
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

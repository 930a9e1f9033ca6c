"""The database goes away under a running worker (PostgreSQL only).

* Every connection of the worker processes is killed with
  ``pg_terminate_backend`` several times while jobs run: the workers log it,
  reconnect and finish every job, each effect exactly once.
* A private server (never the shared one) is restarted mid-run: the worker
  survives the outage and finishes everything; while the server is down a
  standalone ``Queue.enqueue`` raises :class:`QueueUnavailableError`; a job
  that was reported as enqueued always exists afterwards, and one that was
  reported as not enqueued never runs.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tenantry import StoreConfig, Tenantry, TenantryConfig, TenantryError, tenant_context
from tenantry.errors import QueueUnavailableError
from tenantry.queue import EnqueuedJob
from tests.conftest import TenantryFactory
from tests.integration.faults.conftest import FleetFactory
from tests.integration.faults.harness import JobBook, create_tenants, modes_for, wait_until
from tests.pgcluster import PgCluster
from tests.queue_app import RecordPayload

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(240)]


def _seed() -> int:
    return int(os.environ.get("TENANTRY_FAULT_SEED", random.randrange(1 << 30)))


def _terminate_backends(admin_url: str, database: str) -> int:
    """Kill every session on *database* and its tenant databases, except our own."""
    url = make_url(admin_url)
    with psycopg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password,
        dbname="postgres",
        autocommit=True,
        connect_timeout=5,
    ) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE (datname = %s OR datname LIKE %s) AND pid <> pg_backend_pid()",
            (database, database.replace("_", "\\_") + "\\_%"),
        ).fetchall()
    return sum(1 for (ok,) in rows if ok)


def test_terminated_connections_workers_recover_exactly_once(
    make_tenantry: TenantryFactory, make_fleet: FleetFactory
) -> None:
    seed = _seed()
    rng = random.Random(seed)
    tenantry = make_tenantry("postgresql")
    url = tenantry.config.stores["default"].url
    database = str(make_url(url).database)
    book = JobBook(tenantry, create_tenants(tenantry, "term", modes_for("postgresql")))
    book.setup()
    book.enqueue(500, rng=rng, sleep=(0.02, 0.12))

    fleet = make_fleet(url)
    workers = [fleet.start(), fleet.start()]
    for worker in workers:
        fleet.wait_ready(worker)

    def diagnostics() -> str:
        return f"seed={seed}\n{fleet.report(40)}"

    wait_until(
        lambda: book.completed() >= 20, timeout=30, what="work to start", diagnostics=diagnostics
    )
    killed: list[tuple[int, int]] = []  # (completed before, sessions terminated)
    for _ in range(6):
        done = book.completed()
        if done >= len(book.jobs):
            break
        killed.append((done, _terminate_backends(url, database)))
        time.sleep(rng.uniform(0.5, 0.9))

    assert len(killed) >= 3, f"the jobs finished before the faults: {killed}\n{diagnostics()}"
    assert all(n > 0 for _, n in killed), f"nothing was terminated: {killed}"
    book.wait_all_completed(120, lambda: f"{killed}\n{diagnostics()}")
    assert all(w.alive for w in workers), f"a worker died of the faults\n{diagnostics()}"
    statuses = fleet.stop_all()
    assert all(rc == 0 for rc in statuses.values()), f"{statuses}\n{diagnostics()}"
    fleet.assert_clean_exits()
    tolerated = fleet.assert_no_internal_errors(tolerate_db_errors=True)
    book.assert_exactly_once(diagnostics)
    logs = "".join(w.log() for w in workers)
    # The workers saw the faults and said so (and recovered, as checked above).
    assert "WARNING" in logs or "ERROR" in logs, diagnostics()
    print(
        f"terminations (completed, sessions): {killed}; errors {book.interrupted_attempts()}; "
        f"database errors logged as internal errors: {tolerated}"
    )


@dataclass
class _BackgroundEnqueuer:
    """Enqueues one job at a time (standalone) until stopped, noting every outcome."""

    book: JobBook
    tenants: list[str]
    accepted: list[tuple[str, EnqueuedJob]] = field(default_factory=list)
    refused: dict[str, BaseException] = field(default_factory=dict)
    unexpected: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            tenant_id = self.tenants[n % len(self.tenants)]
            key = f"{tenant_id}:bg{n}"
            try:
                with tenant_context(tenant_id):
                    job = self.book.queue.enqueue("record", RecordPayload(key))
            except QueueUnavailableError as exc:
                self.refused[key] = exc
            except Exception as exc:  # recorded and asserted on by the test
                self.unexpected.append(exc)
                self.refused[key] = exc
            else:
                self.accepted.append((key, job))
            time.sleep(0.02)


def test_server_restart_worker_reconnects_and_enqueue_fails_cleanly(
    pg_cluster: PgCluster, make_fleet: FleetFactory
) -> None:
    seed = _seed()
    rng = random.Random(seed)
    url = pg_cluster.create_database("restart")
    tenantry = Tenantry(TenantryConfig(stores={"default": StoreConfig("default", url)}))
    try:
        tenants = create_tenants(tenantry, "rs", modes_for("postgresql"))
        book = JobBook(tenantry, tenants)
        book.setup()
        book.enqueue(1000, rng=rng, sleep=(0.0, 0.02))

        fleet = make_fleet(url)
        worker = fleet.start()
        fleet.wait_ready(worker)

        def diagnostics() -> str:
            return f"seed={seed}\n{fleet.report(40)}\n--- server log ---\n{pg_cluster.log_tail(20)}"

        wait_until(
            lambda: book.completed() >= 150,
            timeout=60,
            what="the worker to be well into the jobs",
            diagnostics=diagnostics,
        )
        enqueuer = _BackgroundEnqueuer(book, tenants)
        thread = threading.Thread(target=enqueuer.run, name="enqueuer", daemon=True)
        thread.start()
        try:
            time.sleep(0.5)
            completed_before = book.completed()
            pg_cluster.stop("fast")
            down_at = time.monotonic()
            # While the server is down, a standalone enqueue fails with a clear error.
            for tenant_id in tenants:
                key = book.new_key(tenant_id)
                with tenant_context(tenant_id), pytest.raises(TenantryError) as caught:
                    book.queue.enqueue("record", RecordPayload(key))
                del book.keys[key]  # refused while the server was down: it must never run
                assert isinstance(caught.value, QueueUnavailableError), (
                    f"{tenant_id}: expected QueueUnavailableError, got "
                    f"{type(caught.value).__name__}: {caught.value}"
                )
            time.sleep(max(0.0, 4.0 - (time.monotonic() - down_at)))  # > the 2 s lease
            pg_cluster.start()
            time.sleep(1.5)  # enqueue through the recovery too
        finally:
            enqueuer.stop.set()
            thread.join(timeout=30)
        assert not thread.is_alive(), "the enqueuer thread hung"
        assert not enqueuer.unexpected, (
            f"enqueue failed with something other than QueueUnavailableError: "
            f"{[f'{type(e).__name__}: {e}' for e in enqueuer.unexpected[:5]]}"
        )
        assert any(isinstance(e, QueueUnavailableError) for e in enqueuer.refused.values())
        for key, job in enqueuer.accepted:
            book.keys[key] = job.tenant_id
            book.jobs.append(job)

        book.wait_all_completed(120, diagnostics)
        assert worker.alive, f"the worker died during the outage\n{diagnostics()}"
        statuses = fleet.stop_all()
        assert all(rc == 0 for rc in statuses.values()), f"{statuses}\n{diagnostics()}"
        fleet.assert_clean_exits()
        tolerated = fleet.assert_no_internal_errors(tolerate_db_errors=True)
        # A job reported as enqueued is never missing...
        for job in book.jobs:
            found = book.queue.admin.get_job(job.tenant_id, job.id)
            assert found.payload["key"] in book.keys
        # ...every one ran exactly once. A refused enqueue never ran, except that one
        # whose connection broke around COMMIT has an unknown outcome (as documented):
        # it may have run, but at most once.
        book.assert_exactly_once(diagnostics, uncertain=enqueuer.refused)
        assert "reachable again" in worker.log() or "LISTEN" in worker.log(), diagnostics()
        notes = book.notes()
        print(
            f"completed before the stop: {completed_before}; background enqueues "
            f"accepted {len(enqueuer.accepted)}, refused {len(enqueuer.refused)} "
            f"(of which ran anyway: {sum(1 for k in enqueuer.refused if notes[k])}); "
            f"errors {book.interrupted_attempts()}; database errors logged as internal "
            f"errors: {tolerated}"
        )
    finally:
        tenantry.close()

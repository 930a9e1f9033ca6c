"""Graceful shutdown of a real ``tenantry worker`` process (SIGTERM / SIGINT).

The worker runs 8 jobs at a time and holds 8 more prefetched (claimed, so
``running`` in the table, but not started). On the first SIGTERM it stops
claiming, hands the prefetched jobs back at once, and gives the running ones
``--grace`` seconds; whatever is still running then is cancelled and handed
back too ("released": ``available`` again, the attempt not counted). A second
signal during the drain stops it hard, at once. Either way nothing is lost:
another worker later completes every job, each exactly once.
"""

from __future__ import annotations

import random
import re
import signal
import time

import pytest

from tenantry import JobState, Tenantry
from tenantry.queue import Job
from tests.conftest import TenantryFactory
from tests.integration.faults.conftest import FleetFactory
from tests.integration.faults.harness import JobBook, WorkerFleet, WorkerProcess, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timing, pytest.mark.timeout(120)]

CONCURRENCY = 8
JOBS = 20  # 8 running + 8 prefetched + 4 never claimed
KINDS = ["record", "record_async"]  # a blocking handler in a thread, and a coroutine


def _setup(
    make_tenantry: TenantryFactory, backend: str, kind: str, sleep: float
) -> tuple[Tenantry, JobBook]:
    tenantry = make_tenantry(backend)
    tenantry.create_tenant("sig_shared")
    book = JobBook(tenantry, ["sig_shared"])
    book.setup()
    book.enqueue(JOBS, rng=random.Random(0), sleep=(sleep, sleep), kinds=[kind])
    return tenantry, book


def _start_and_wait_busy(
    fleet: WorkerFleet, book: JobBook, grace: float
) -> tuple[WorkerProcess, set[int]]:
    """Start one worker and wait until it has claimed a full load (8 running, 8 buffered)."""
    worker = fleet.start(concurrency=CONCURRENCY, grace=grace, lease=5)
    fleet.wait_ready(worker)
    claimed = 2 * CONCURRENCY

    def busy() -> bool:
        return book.counts()[JobState.RUNNING.value] >= claimed

    wait_until(busy, timeout=20, what=f"{claimed} claimed jobs", diagnostics=fleet.report)
    running = {j.id for j in book.all_jobs() if j.state is JobState.RUNNING}
    return worker, running


def _by_state(jobs: list[Job]) -> dict[JobState, list[Job]]:
    out: dict[JobState, list[Job]] = {s: [] for s in JobState}
    for job in jobs:
        out[job.state].append(job)
    return out


def _assert_released_untouched(jobs: list[Job], report: str) -> None:
    """Handed back, not failed: available, attempt 0, no error recorded, no lease."""
    for job in jobs:
        assert (job.attempt, job.errors, job.lease_token, job.worker_id) == (0, [], None, None), (
            f"job {job.id} was not cleanly released: attempt={job.attempt} "
            f"errors={job.errors} lease={job.lease_token} worker={job.worker_id}\n{report}"
        )


def _finish_with_new_worker(fleet: WorkerFleet, book: JobBook) -> None:
    fleet.start(concurrency=JOBS, grace=1)  # one wave: every job at once
    book.wait_all_completed(60, fleet.report)
    statuses = fleet.stop_all()
    assert all(rc == 0 for rc in statuses.values()), f"{statuses}\n{fleet.report()}"
    fleet.assert_clean_exits()
    book.assert_exactly_once(fleet.report)
    fleet.assert_no_internal_errors()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigterm_drains_running_jobs_within_grace(
    backend: str, kind: str, make_tenantry: TenantryFactory, make_fleet: FleetFactory
) -> None:
    grace, job_seconds = 5.0, 2.5
    tenantry, book = _setup(make_tenantry, backend, kind, job_seconds)
    fleet = make_fleet(tenantry.config.stores["default"].url)
    worker, claimed = _start_and_wait_busy(fleet, book, grace)

    time.sleep(0.3)
    sent = time.monotonic()
    fleet.send(worker, signal.SIGTERM)
    rc = fleet.wait_exit(worker, grace + 10)
    took = time.monotonic() - sent

    assert rc == 0, fleet.report()
    # It waited for the running jobs (about 2.2 s left), not for the whole grace period.
    assert took < grace, f"exit took {took:.1f}s\n{fleet.report()}"
    states = _by_state(book.all_jobs())
    completed = {j.id for j in states[JobState.COMPLETED]}
    assert len(completed) == CONCURRENCY, f"{book.describe()}\n{fleet.report()}"
    assert completed <= claimed
    assert states[JobState.RUNNING] == []
    assert len(states[JobState.AVAILABLE]) == JOBS - CONCURRENCY
    _assert_released_untouched(states[JobState.AVAILABLE], fleet.report())
    # The claimed-ahead buffer went back (its size is the adaptive prefetch's).
    stats = re.search(r"claimed=(\d+), completed=(\d+),.*released=(\d+)", worker.log())
    assert stats is not None, worker.log()
    held, done, released = (int(g) for g in stats.groups())
    assert (done, released) == (CONCURRENCY, held - CONCURRENCY), worker.log()
    assert released >= 1
    assert f"released {released} job(s)" in worker.log()
    # The drained jobs' notes were committed with them, once each.
    notes = book.notes()
    keys = {str(j.payload["key"]) for j in states[JobState.COMPLETED]}
    assert {k: n for k, n in notes.items() if n} == dict.fromkeys(keys, 1)

    _finish_with_new_worker(fleet, book)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigterm_past_grace_releases_interrupted_jobs(
    backend: str, kind: str, make_tenantry: TenantryFactory, make_fleet: FleetFactory
) -> None:
    grace, job_seconds = 0.3, 5.0
    tenantry, book = _setup(make_tenantry, backend, kind, job_seconds)
    fleet = make_fleet(tenantry.config.stores["default"].url)
    worker, _ = _start_and_wait_busy(fleet, book, grace)

    time.sleep(0.3)
    sent = time.monotonic()
    fleet.send(worker, signal.SIGTERM)
    rc = fleet.wait_exit(worker, job_seconds + 10)
    took = time.monotonic() - sent

    assert rc == 0, fleet.report()
    states = _by_state(book.all_jobs())
    assert len(states[JobState.AVAILABLE]) == JOBS, f"{book.describe()}\n{fleet.report()}"
    _assert_released_untouched(states[JobState.AVAILABLE], fleet.report())
    assert sum(book.notes().values()) == 0, "an interrupted job's writes were committed"
    # The grace period is 0.3 s and the jobs had ~4.5 s to go: it must not wait for them.
    # (A blocking handler's thread cannot be interrupted: see test_blocking_handler_*.)
    limit = grace + 2.5 if kind == "record_async" else job_seconds + 5
    assert took < limit, f"exit took {took:.1f}s after SIGTERM\n{fleet.report()}"

    _finish_with_new_worker(fleet, book)


@pytest.mark.parametrize(
    ("second", "kind"), [(signal.SIGTERM, "record"), (signal.SIGINT, "record_async")]
)
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_second_signal_during_drain_stops_hard(
    backend: str,
    second: signal.Signals,
    kind: str,
    make_tenantry: TenantryFactory,
    make_fleet: FleetFactory,
) -> None:
    grace, job_seconds = 30.0, 5.0
    tenantry, book = _setup(make_tenantry, backend, kind, job_seconds)
    fleet = make_fleet(tenantry.config.stores["default"].url)
    worker, _ = _start_and_wait_busy(fleet, book, grace)

    fleet.send(worker, signal.SIGTERM)
    wait_until(
        lambda: "draining" in worker.log(),
        timeout=5,
        what="the worker to start draining",
        diagnostics=fleet.report,
    )
    time.sleep(0.3)
    sent = time.monotonic()
    fleet.send(worker, second)
    rc = fleet.wait_exit(worker, job_seconds + 10)
    took = time.monotonic() - sent

    assert rc == 0, fleet.report()
    assert "stopping hard" in worker.log()
    states = _by_state(book.all_jobs())
    assert len(states[JobState.AVAILABLE]) == JOBS, f"{book.describe()}\n{fleet.report()}"
    _assert_released_untouched(states[JobState.AVAILABLE], fleet.report())
    assert sum(book.notes().values()) == 0, "an interrupted job's writes were committed"
    limit = 2.5 if kind == "record_async" else job_seconds + 5  # see test_blocking_handler_*
    assert took < limit, f"hard stop took {took:.1f}s after the second signal\n{fleet.report()}"

    _finish_with_new_worker(fleet, book)


@pytest.mark.parametrize("hard", [False, True], ids=["grace-expired", "second-signal"])
def test_blocking_handler_does_not_hold_the_process_past_grace(
    hard: bool, make_tenantry: TenantryFactory, make_fleet: FleetFactory
) -> None:
    grace, job_seconds = (30.0 if hard else 0.3), 6.0
    tenantry, book = _setup(make_tenantry, "sqlite", "record", job_seconds)
    fleet = make_fleet(tenantry.config.stores["default"].url)
    worker, _ = _start_and_wait_busy(fleet, book, grace)

    fleet.send(worker, signal.SIGTERM)
    if hard:
        wait_until(
            lambda: "draining" in worker.log(),
            timeout=5,
            what="the worker to start draining",
            diagnostics=fleet.report,
        )
        fleet.send(worker, signal.SIGTERM)
    sent = time.monotonic()
    rc = fleet.wait_exit(worker, job_seconds + 10)
    took = time.monotonic() - sent

    assert rc == 0, fleet.report()
    # Every job was handed back before the process lingered: nothing depends on the
    # handler threads any more, yet the process waits the full job time for them.
    assert " stopped: " in worker.log()
    assert book.counts()[JobState.AVAILABLE.value] == JOBS
    assert took < (0.0 if hard else grace) + 2.0, (
        f"the process exited {took:.1f}s after the (last) signal; the worker had already "
        f"stopped and released every job\n{fleet.report()}"
    )

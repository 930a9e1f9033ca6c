"""What a worker reports: outcome counters, test signals, rate-limited error logs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from types import SimpleNamespace
from typing import cast

import pytest

from tenantry.queue.job import Job
from tenantry.queue.worker.observe import (
    COMPLETED,
    DEAD,
    LOST,
    RETRIED,
    ErrorLog,
    Report,
    Signal,
)


def _job(tenant_id: str) -> Job:
    return cast(Job, SimpleNamespace(tenant_id=tenant_id))


async def test_a_signal_wakes_waiters_once_their_count_is_reached() -> None:
    signal = Signal()
    signal.bump()
    waiter = asyncio.create_task(signal.more(2))
    await asyncio.sleep(0)
    signal.bump()
    await asyncio.sleep(0)
    assert not waiter.done()
    signal.bump()
    await asyncio.wait_for(waiter, 1)
    await signal.reach(3)  # already there: returns at once
    assert signal.count == 3


async def test_a_signal_that_never_comes_times_out() -> None:
    signal = Signal()
    with pytest.raises(TimeoutError):
        await signal.more(1, timeout=0.01)
    signal.bump()  # the timed-out waiter is dropped, not resolved
    assert signal.count == 1


class _Observer:
    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def claimed(self, jobs: Sequence[Job], seconds: float) -> None:
        raise RuntimeError("a metrics bug")

    def handler_finished(self, job: Job, seconds: float, error: BaseException | None) -> None:
        return None

    def outcome(self, job: Job, outcome: str) -> None:
        self.outcomes.append(outcome)


def test_outcomes_are_counted_in_the_stats_the_tenant_counters_and_the_observer() -> None:
    observer = _Observer()
    report = Report(observer)
    for outcome in (COMPLETED, COMPLETED, RETRIED, DEAD, LOST):
        report.outcome(_job("acme"), outcome)
    stats = report.stats
    assert (stats.completed, stats.retried, stats.dead, stats.lost) == (2, 1, 1, 1)
    acme = report.tenant_stats["acme"]
    assert (acme.completed, acme.failed, acme.dead) == (2, 1, 1)
    assert observer.outcomes == [COMPLETED, COMPLETED, RETRIED, DEAD, LOST]


def test_an_observer_that_raises_does_not_stop_the_worker(caplog: pytest.LogCaptureFixture) -> None:
    report = Report(_Observer())
    with caplog.at_level(logging.ERROR, logger="tenantry.queue.worker.observe"):
        report.observe("claimed", [], 0.1)
    assert "worker observer failed on claimed" in caplog.text


def test_database_errors_are_logged_once_per_operation_and_source_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("tenantry.test.errorlog")
    errors = ErrorLog(logger, interval=3600)
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for _ in range(3):
            errors.failed("maintenance", "default", OSError("connection refused"))
        errors.failed("maintenance", "other", OSError("connection refused"))
        errors.failed("source refresh", "default", OSError("connection refused"))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "maintenance on default failed: OSError: connection refused",
        "maintenance on other failed: OSError: connection refused",
        "source refresh on default failed: OSError: connection refused",
    ]


def test_a_repeated_error_says_how_many_were_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tenantry.test.errorlog")
    now = [0.0]
    errors = ErrorLog(logger, interval=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger=logger.name):
        errors.failed("heartbeat", "default", OSError("gone"))
        now[0] = 30.0
        errors.failed("heartbeat", "default", OSError("gone"))  # within the interval
        now[0] = 61.0
        errors.failed("heartbeat", "default", OSError("gone"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[-1].endswith("(1 more since last logged)")

"""Workers die mid-job (``kill -9``) over and over; nothing is lost or done twice.

Three ``tenantry worker`` subprocesses serve ~2000 transactional ``record``
jobs of tenants in every isolation mode. Every second or two a random worker
is killed with SIGKILL (no chance to release anything: its running and
prefetched jobs stay ``running`` under a lease nobody renews) and a
replacement is started. Other workers must rescue those jobs once their lease
(2 s) expires, and because ``record`` writes its note in the same transaction
that completes the job, each key must end with exactly one note.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from tests.conftest import TenantryFactory
from tests.integration.faults.conftest import FleetFactory
from tests.integration.faults.harness import JobBook, create_tenants, modes_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TOTAL_JOBS = 2000
KILLS = 8
PREFILL = 1400


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kill9_workers_repeatedly_every_job_runs_exactly_once(
    backend: str, make_tenantry: TenantryFactory, make_fleet: FleetFactory
) -> None:
    seed = int(os.environ.get("TENANTRY_FAULT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    tenantry = make_tenantry(backend)
    url = tenantry.config.stores["default"].url
    book = JobBook(tenantry, create_tenants(tenantry, "crash", modes_for(backend)))
    book.setup()
    book.enqueue(PREFILL, rng=rng)
    top_up = (TOTAL_JOBS - PREFILL) // KILLS

    fleet = make_fleet(url)

    def diagnostics() -> str:
        return f"seed={seed} (rerun with TENANTRY_FAULT_SEED={seed})\n{fleet.report()}"

    first = [fleet.start() for _ in range(3)]
    fleet.wait_ready(first[0])
    started = time.monotonic()

    kills = 0
    completed_at_kill: list[int] = []
    for _ in range(KILLS):
        time.sleep(rng.uniform(1.0, 1.6))
        book.enqueue(top_up, rng=rng)  # there is always work in flight when we kill
        alive = fleet.alive()
        assert alive, f"every worker is gone (a replacement failed to start?)\n{diagnostics()}"
        victim = rng.choice([w for w in alive if w.ready] or alive)
        fleet.send(victim, signal.SIGKILL)
        assert fleet.wait_exit(victim, 10) == -signal.SIGKILL
        kills += 1
        completed_at_kill.append(book.completed())
        fleet.start()

    assert len(book.jobs) == PREFILL + top_up * KILLS
    drain = book.wait_all_completed(120, diagnostics)
    statuses = fleet.stop_all(timeout=15)
    assert all(rc == 0 for rc in statuses.values()), f"{statuses}\n{diagnostics()}"
    fleet.assert_clean_exits()
    fleet.assert_no_internal_errors()

    book.assert_exactly_once(diagnostics)
    errors = book.interrupted_attempts()
    # The kills really interrupted work: jobs were taken back from dead workers.
    assert errors.get("LeaseExpired", 0) > 0, f"no job was ever rescued: {errors}\n{diagnostics()}"
    assert completed_at_kill[0] < len(book.jobs), "the first kill came after all work was done"
    print(
        f"{backend}: {len(book.jobs)} jobs, {kills} kills, completed at each kill "
        f"{completed_at_kill}, drained {drain:.1f}s after the last kill, "
        f"{time.monotonic() - started:.1f}s in all; recorded errors {errors}; seed {seed}"
    )

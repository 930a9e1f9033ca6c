"""Job ids across a move: a job id never names another job of the same tenant afterwards.

The unfinished jobs keep their ids; the target's id counter is moved past
every id the source gave out (finished and pruned jobs included); a job whose
id another tenant's job holds in a shared jobs table gets a new id, which the
move reports.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import delete, update

from tenantry import Queue, Tenantry, tenant_context
from tenantry.errors import JobNotFoundError
from tenantry.lifecycle.move import move_tenant
from tenantry.queue.schema import jobs_table
from tenantry.queue.sources import source_of
from tests.conftest import TenantryFactory
from tests.integration.lifecycle.test_move import two_stores  # noqa: F401 - a fixture
from tests.integration.lifecycle.test_transfer import Ping, registry


def _enqueue(t: Tenantry, tenant_id: str, count: int, first: int = 0) -> list[int]:
    queue = Queue(t, registry)
    with tenant_context(tenant_id):
        return [queue.enqueue("ping", Ping(n=first + n)).id for n in range(count)]


def _history(t: Tenantry, tenant_id: str) -> tuple[dict[int, int], list[int]]:
    """Six jobs: four unfinished, then one completed and one pruned (the highest ids).

    Returns the unfinished jobs (id -> payload) and the ids of the other two.
    """
    ids = _enqueue(t, tenant_id, 6)
    tenant = t.get_tenant(tenant_id)
    with source_of(tenant, t.store(tenant.store)).engine().begin() as conn:
        conn.execute(
            update(jobs_table)
            .where(jobs_table.c.id == ids[4])
            .values(state="completed", attempt=1, finished_at=datetime.now(UTC))
        )
        conn.execute(delete(jobs_table).where(jobs_table.c.id == ids[5]))
    return {job_id: n for n, job_id in enumerate(ids[:4])}, ids[4:]


def _payloads(t: Tenantry, tenant_id: str) -> dict[int, int]:
    jobs = Queue(t, registry).admin.list_jobs(tenant_id=tenant_id)
    return {job.id: int(job.payload["n"]) for job in jobs}


def _check_moved(
    t: Tenantry, tenant_id: str, before: dict[int, int], gone: list[int], renamed: dict[int, int]
) -> None:
    """Every kept id names its job, a renumbered job is under its new id, the rest is gone.

    The completed job (``gone[0]``) is not copied; it stays only where both
    copies share one jobs table, under its id.
    """
    expected = {renamed.get(old, old): n for old, n in before.items()}
    now = _payloads(t, tenant_id)
    assert {job_id: now.get(job_id) for job_id in expected} == expected
    assert {k: v for k, v in now.items() if k not in expected} in ({}, {gone[0]: 4})
    admin = Queue(t, registry).admin
    for old in [*gone[1:], *renamed, *([] if gone[0] in now else gone[:1])]:
        with pytest.raises(JobNotFoundError):
            admin.get_job(tenant_id, old)
    # A job enqueued now gets an id the tenant never had: not a finished one, not a pruned one.
    (fresh,) = _enqueue(t, tenant_id, 1, first=100)
    assert fresh > max([*before, *gone, *renamed.values()])


ROUTES = [
    # (second store, from store, from mode, to store, to mode)
    ("postgresql", "default", "shared", "default", "schema"),  # one jobs table for both
    ("postgresql", "default", "schema", "eu", "database"),  # COPY between servers
    ("postgresql", "eu", "database", "default", "shared"),  # COPY between servers
    ("sqlite", "default", "schema", "eu", "database"),  # PostgreSQL -> SQLite
    ("sqlite", "eu", "database", "default", "shared"),  # SQLite -> PostgreSQL
]


@pytest.mark.parametrize(("eu", "src", "src_mode", "dst", "dst_mode"), ROUTES)
def test_jobs_keep_their_ids_across_a_move(
    two_stores: Any,  # noqa: F811 - the fixture imported above
    eu: str,
    src: str,
    src_mode: str,
    dst: str,
    dst_mode: str,
) -> None:
    t: Tenantry = two_stores(eu)
    t.create_tenant("acme", isolation=src_mode, store=src)
    before, gone = _history(t, "acme")

    result = move_tenant(t, "acme", to_store=dst, isolation=dst_mode)

    assert result.job_ids == {}
    _check_moved(t, "acme", before, gone, {})


def test_sqlite_jobs_keep_their_ids_from_shared_tables_to_a_database(
    make_tenantry: TenantryFactory,
) -> None:
    t = make_tenantry("sqlite")
    t.create_tenant("acme", isolation="shared")
    t.create_tenant("globex", isolation="shared")
    _enqueue(t, "globex", 3)  # the shared table's ids are numbered for both tenants
    before, gone = _history(t, "acme")
    _enqueue(t, "globex", 3)

    result = move_tenant(t, "acme", isolation="database")

    assert result.job_ids == {}
    _check_moved(t, "acme", before, gone, {})


def _clash(t: Tenantry, store: str) -> tuple[dict[int, int], list[int], dict[int, int]]:
    """acme (own database) and globex (shared, *store*) have jobs under the same ids."""
    t.create_tenant("acme", isolation="database", store=store)
    t.create_tenant("globex", isolation="shared", store=store)
    before, gone = _history(t, "acme")
    theirs = {i: n for n, i in enumerate(_enqueue(t, "globex", 2))}
    assert set(before) & set(theirs)  # both tables numbered from 1
    return before, gone, theirs


def test_a_job_whose_id_another_tenant_holds_gets_a_new_one(make_tenantry: TenantryFactory) -> None:
    t = make_tenantry("sqlite")
    before, gone, theirs = _clash(t, "default")

    result = move_tenant(t, "acme", isolation="shared")

    assert set(result.job_ids) == set(before) & set(theirs)
    assert all(new > max(*before, *gone, *theirs) for new in result.job_ids.values())
    _check_moved(t, "acme", before, gone, result.job_ids)
    assert _payloads(t, "globex") == theirs  # the neighbour's jobs are untouched


def test_a_server_copy_renumbers_only_the_clashing_jobs(two_stores: Any) -> None:  # noqa: F811
    t: Tenantry = two_stores("postgresql")
    t.create_tenant("globex", isolation="shared", store="default")
    theirs = {i: n for n, i in enumerate(_enqueue(t, "globex", 2))}
    t.create_tenant("acme", isolation="database", store="eu")
    before, gone = _history(t, "acme")
    clashing = set(before) & set(theirs)
    assert clashing  # some ids are taken in the target's jobs table
    assert set(before) - clashing  # and some are free

    result = move_tenant(t, "acme", to_store="default", isolation="shared")

    assert set(result.job_ids) == clashing
    _check_moved(t, "acme", before, gone, result.job_ids)
    assert _payloads(t, "globex") == theirs

"""Every enqueue path stores the same values, however awkward the strings.

A large standalone ``enqueue_many`` on PostgreSQL writes binary ``COPY``
data that tenantry encodes itself (lengths, integers, timestamps); the other
paths bind parameters. Each must store exactly what the caller gave, and all must agree.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Connection, event
from sqlalchemy.exc import StatementError

from tenantry import JobContext, JobRegistry, Queue, tenant_context
from tenantry.errors import PayloadValidationError
from tenantry.queue import JobState
from tenantry.queue.drivers.postgres.copy import COPY_CHUNK, COPY_MIN_ROWS
from tests.conftest import TenantryFactory

# Strings COPY's text format reads specially (backslash, tab, newline, CR, \N,
# the end-of-data marker), JSON escapes, quotes, non-ASCII and astral characters.
NASTY = [
    "back\\slash",
    "\\",
    "\\\\",
    "\\N",
    "\\.",
    "tab\there",
    "new\nline",
    "cr\rlf\r\n",
    'quo"te',
    "single'quote",
    "ünï©ødé ĳ € 日本語",
    "emoji 😀 \U0001f9ea",
    "\u2028\u2029",
    "ctrl \x01\x07\x1b\x1f",
    "null",
    "",
    " ",
    "trailing\\",
]


def _registry() -> JobRegistry:
    registry = JobRegistry()

    @registry.handler("doc")
    def doc(ctx: JobContext, payload: dict[str, Any]) -> None:
        return None

    @registry.handler("text")
    def text_job(ctx: JobContext, payload: str) -> None:
        return None

    @registry.handler("num")
    def num(ctx: JobContext, payload: dict[str, float]) -> None:
        return None

    return registry


def _docs(n: int) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for i in range(n):
        s = NASTY[i % len(NASTY)]
        docs.append(
            {
                "i": i,
                "s": s,
                s or "empty": [s, i * 0.5, None, True, {"k\t\\": s}],
                "f": [1e16, 1e-7, 123456789012345.67, -0.0, 2**63],
            }
        )
    return docs


@pytest.fixture
def queue(make_tenantry: TenantryFactory, backend: str) -> Queue:
    t = make_tenantry(backend)
    t.create_tenant("acme")
    q = Queue(t, _registry())
    q.setup()
    return q


def _stored(queue: Queue, job_ids: list[int]) -> list[Any]:
    return [queue.admin.get_job("acme", i).payload for i in job_ids]


def test_every_path_stores_awkward_payloads_exactly(queue: Queue, backend: str) -> None:
    docs = _docs(COPY_MIN_ROWS + 37)
    texts = [NASTY[i % len(NASTY)] for i in range(COPY_MIN_ROWS + 5)]
    options: dict[str, Any] = {"queue": "q\t\\x ü", "correlation_id": "c\\N\n\tü"}
    with tenant_context("acme"):
        bulk = queue.enqueue_many("doc", docs, **options)  # COPY on PostgreSQL
        few = queue.enqueue_many("doc", docs[:7], **options)  # one INSERT over arrays
        ones = [queue.enqueue("doc", d, **options) for d in docs[: len(NASTY)]]  # one row
        with queue.tenantry.session() as s:  # the caller's transaction
            in_session = queue.enqueue_many("doc", docs[: COPY_MIN_ROWS + 3], session=s)
            s.commit()
        bulk_texts = queue.enqueue_many("text", texts)
        keyed = queue.enqueue("text", NASTY[0], idempotency_key="k\\\t")
    assert _stored(queue, [j.id for j in bulk]) == docs
    assert _stored(queue, [j.id for j in few]) == docs[:7]
    assert _stored(queue, [j.id for j in ones]) == docs[: len(NASTY)]
    assert _stored(queue, [j.id for j in in_session]) == docs[: COPY_MIN_ROWS + 3]
    assert _stored(queue, [j.id for j in bulk_texts]) == texts
    assert _stored(queue, [keyed.id]) == [NASTY[0]]
    for job in (bulk[0], bulk[-1], few[0], ones[-1]):
        got = queue.admin.get_job("acme", job.id)
        assert (got.queue, got.correlation_id) == (options["queue"], options["correlation_id"])
        assert (got.kind, got.errors, got.attempt, got.state) == ("doc", [], 0, JobState.AVAILABLE)
        assert (job.queue, job.kind, job.state, job.created) == (
            options["queue"],
            "doc",
            JobState.AVAILABLE,
            True,
        )
    # Ids are returned in payload order, distinct.
    assert len({j.id for j in bulk}) == len(bulk)
    assert [j.id for j in bulk] == sorted(j.id for j in bulk)


def test_bulk_stores_every_column_as_one_row_does(queue: Queue) -> None:
    # Past and future, before and after 2000-01-01 (binary COPY's epoch), with microseconds.
    whens = [
        datetime(2041, 3, 4, 5, 6, 7, 891011, tzinfo=timezone(timedelta(hours=-5))),
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    ]
    for when in whens:
        options: dict[str, Any] = {
            "run_at": when,
            "priority": -32768,
            "max_attempts": 2**31 - 1,
            "correlation_id": "corr ü\\t",
        }
        with tenant_context("acme"):
            before = datetime.now(UTC)
            bulk = queue.enqueue_many("doc", _docs(COPY_MIN_ROWS), **options)
            one = queue.enqueue("doc", {"one": 1}, **options)
        for job in (bulk[0], bulk[-1]):
            got, ref = queue.admin.get_job("acme", job.id), queue.admin.get_job("acme", one.id)
            assert got.scheduled_at == ref.scheduled_at == when
            assert before <= got.created_at <= ref.created_at
            columns = ("state", "priority", "max_attempts", "attempt", "errors", "queue", "kind")
            assert {c: getattr(got, c) for c in columns} == {c: getattr(ref, c) for c in columns}
            assert got.correlation_id == ref.correlation_id == options["correlation_id"]
            assert (got.tenant_id, got.priority, got.max_attempts) == ("acme", -32768, 2**31 - 1)
            assert got.state == (JobState.SCHEDULED if when > before else JobState.AVAILABLE)


async def test_async_bulk_stores_awkward_payloads_exactly(queue: Queue) -> None:
    docs = _docs(COPY_MIN_ROWS + 11)
    async with tenant_context("acme"):
        bulk = await queue.aenqueue_many("doc", docs, queue="a\tq\\")
        one = await queue.aenqueue("doc", docs[5])
    assert _stored(queue, [j.id for j in bulk]) == docs
    assert _stored(queue, [one.id]) == [docs[5]]
    assert {queue.admin.get_job("acme", j.id).queue for j in bulk[:3]} == {"a\tq\\"}
    await queue.tenantry.aclose()


@pytest.mark.parametrize("size", [1, 5, COPY_MIN_ROWS])
def test_a_non_finite_float_is_refused_before_the_write(
    make_tenantry: TenantryFactory, size: int
) -> None:
    """jsonb has no Infinity. pydantic's JSON serializer writes null for it, and an
    ``Any`` field's JSON-ready form was null too: such a payload was stored altered
    (``Any``) or refused by the database (a float field). Now both are refused
    before anything is written, on every enqueue path (one row, arrays, COPY)."""
    t = make_tenantry("postgresql")
    t.create_tenant("acme")
    queue = Queue(t, _registry())
    queue.setup()
    docs = [{"i": float(i), "x": 0.5} for i in range(size)]
    docs[-1]["x"] = math.inf
    with tenant_context("acme"):
        with pytest.raises(PayloadValidationError, match="finite"):
            queue.enqueue_many("num", docs)
        with pytest.raises(PayloadValidationError, match="finite"):
            queue.enqueue_many("doc", [{"x": 1.0}] * (size - 1) + [{"x": [math.nan]}])
    assert queue.admin.count_jobs(tenant_id="acme")["available"] == 0
    with tenant_context("acme"):
        done = queue.enqueue_many("num", [*docs[:-1], {"x": -0.0}])
        nulls = queue.enqueue_many("doc", [{"x": None}] * size)
    assert _stored(queue, [done[-1].id]) == [{"x": -0.0}]
    assert _stored(queue, [nulls[-1].id]) == [{"x": None}]


def test_bulk_copy_is_one_copy_and_commits_with_its_notify(make_tenantry: TenantryFactory) -> None:
    t = make_tenantry("postgresql")
    t.create_tenant("acme")
    queue = Queue(t, _registry())
    queue.setup()
    statements: list[str] = []

    def spy(conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = queue.admin.source_for("acme").enqueue_engine()
    event.listen(engine, "before_cursor_execute", spy)
    try:
        with tenant_context("acme"):
            jobs = queue.enqueue_many("doc", _docs(COPY_MIN_ROWS))
    finally:
        event.remove(engine, "before_cursor_execute", spy)
    assert len(jobs) == COPY_MIN_ROWS
    # Ids drawn first, then the COPY (on the driver's connection), then the NOTIFY.
    assert any("nextval" in s for s in statements)
    assert any("pg_notify" in s for s in statements)
    assert not any("INSERT INTO" in s for s in statements)
    assert queue.admin.count_jobs(tenant_id="acme")["available"] == COPY_MIN_ROWS


def test_unserializable_payloads_are_refused_before_anything_is_written(
    queue: Queue,
) -> None:
    class Opaque:
        pass

    with tenant_context("acme"), pytest.raises((StatementError, ValueError, TypeError)):
        queue.enqueue_many("doc", [{"i": 1}] * (COPY_MIN_ROWS - 1) + [{"o": Opaque()}])
    assert sum(queue.admin.count_jobs(tenant_id="acme").values()) == 0


def test_a_copy_of_several_chunks_keeps_every_payload_with_its_id(
    queue: Queue, backend: str
) -> None:
    """The COPY is sent in chunks, each chunk's payload text made as it is sent."""
    n = 2 * COPY_CHUNK + 7
    docs = [{"i": i, "s": NASTY[i % len(NASTY)]} for i in range(n)]
    with tenant_context("acme"):
        jobs = queue.enqueue_many("doc", docs)
    assert len(jobs) == n
    assert [j.id for j in jobs] == sorted({j.id for j in jobs})
    by_id = {j.id: j.payload for j in queue.admin.list_jobs(tenant_id="acme", limit=n + 1)}
    assert [by_id[j.id] for j in jobs] == docs

"""PostgreSQL: ``FOR UPDATE SKIP LOCKED`` claims, server time, LISTEN/NOTIFY."""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import psycopg
from sqlalchemy import ColumnElement, Connection, Engine, Insert, func, literal, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

from tenantry.queue.backends.base import (
    Created,
    Inserted,
    Lease,
    NewJobs,
    QueueBackend,
    is_keyless,
)
from tenantry.queue.fairness import FAIR_WINDOW, interleave
from tenantry.queue.job import Job, JobState
from tenantry.queue.schema import control_table, create_queue_tables, jobs_table
from tenantry.tenancy.isolation import postgres as pg
from tenantry.tenancy.models import TENANTRY_SCHEMA

CHANNEL = "tenantry_jobs"


_TABLE = f"{TENANTRY_SCHEMA}.{jobs_table.name}"
_CONTROL = f"{TENANTRY_SCHEMA}.{control_table.name}"

# What a claim hands back: only what the worker cannot know already (state,
# token and worker are its own), with the payload as text and an empty error
# history as NULL. Decoding rows costs more Python time per job than anything
# else on the claim path; ``_claimed_jobs`` builds the jobs from these tuples.
_CLAIMED = (
    "j.id, j.tenant_id, j.queue, j.kind, j.payload::text AS payload, j.priority, j.attempt,"
    " j.max_attempts, j.scheduled_at, j.created_at, j.attempted_at, j.lease_expires_at,"
    " NULLIF(j.errors, '[]'::jsonb)::text AS errors, j.idempotency_key, j.correlation_id"
)

# The hot path is plain SQL: fixed statement texts skip SQLAlchemy's per-call
# statement building and let psycopg prepare them server-side after a few runs.
# ``id = ANY(ARRAY(subquery))`` runs the locking subquery once (an InitPlan)
# and reaches the chosen rows through the primary key. A join against a CTE
# would do too with a custom plan, but psycopg prepares the statement after a
# few runs and PostgreSQL's generic plan then guesses LIMIT $n at 1,000 rows
# and hash-joins the whole table: claim cost would grow with the table.
_CLAIM = f"""
UPDATE {_TABLE} AS j
SET state = 'running', attempt = j.attempt + 1, attempted_at = now(),
    lease_expires_at = now() + make_interval(secs => %(lease)s),
    lease_token = %(token)s, worker_id = %(worker)s
WHERE j.id = ANY(ARRAY(
    SELECT id FROM {_TABLE}
    WHERE state = 'available' AND {{queue_filter}}{{tenant_filter}}
    ORDER BY priority DESC, scheduled_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
))
RETURNING {_CLAIMED}
"""


# Fair claim (see ``queue/fairness.py`` for the rule), one statement:
# ``ahead``,   a window of up to ``window`` tenants with runnable jobs, in
# ``behind``   tenant id order from ``after`` on, wrapping around to the
#              start, each with when its next job became due (``head``): a
#              loose index scan, one probe per tenant, however long any
#              tenant's backlog is. With more busy tenants than the window,
#              the worker moves ``after`` on from claim to claim, so the cost
#              of a claim stays bounded with ten thousand busy tenants and
#              every tenant's turn comes (FAIR_WINDOW);
# ``ctl``      per busy tenant: its control row (paused tenants drop out,
#              limited ones only if this transaction holds their row lock,
#              see _LOCK_LIMITED), ``held`` (its jobs this worker holds), and
#              its ``allowance`` now (batch size, concurrency limit, whole
#              rate tokens);
# ``firsts``   the ``limit`` tenants whose first job comes first in virtual
#              time: no other tenant can get a place in this batch, so only
#              these are looked at further, however many tenants are busy;
# ``quota``    their runnable jobs counted up to the allowance, the batch in
#              virtual-time order, counted per tenant;
# ``claimed``  each tenant's next ``quota`` jobs by priority, ``SKIP LOCKED``,
#              moved to running (reached by primary key);
# ``spent``    takes the started jobs out of rate-limit buckets.
# Few CTE stages: each costs executor time, and this runs once per batch.
# Every per-tenant scan orders by the full key of ix_tenantry_jobs_fair, so
# that index is the one plan that needs no sort: with ``tenant_id = <outer
# row>`` the planner cannot tell how many rows a tenant has, and without the
# ORDER BY it may pick a scan that reads every runnable job (a generic plan
# did exactly that). The queue filter is kept out of index conditions for the
# same reason (see claim_fair), and the claim sessions make sorting the
# planner's last resort (CLAIM_SESSION_SETTINGS).
def _next_busy(prev: str, upto: str = "") -> str:
    """One probe of the loose scan: the next tenant after *prev* with a runnable job."""
    return (
        f"SELECT j.tenant_id, j.scheduled_at, j.priority, j.id FROM {_TABLE} j "
        "WHERE j.state = 'available' AND {queue_filter}{tenant_filter} "
        f"AND j.tenant_id > {prev}{upto} "
        "ORDER BY j.tenant_id, j.priority DESC, j.scheduled_at, j.id LIMIT 1"
    )


def _from_head(alias: str, source: str, queue_filter: str, tail: str) -> str:
    """A tenant's runnable jobs in priority order, starting at its head job.

    In index order the head is where the tenant's runnable entries start;
    before it lie the entries of jobs already claimed, dead until vacuum.
    Each scan that began at the tenant's first entry walked all of those, and
    three scans per tenant per claim made a long backlog slow down (8 -> 15 ms
    per claim over 100,000 jobs). From the head: its priority from the head's
    position on (a row comparison the index can seek to), then every lower
    priority (a fresh descent, past the dead ones). Exact within the
    statement: its snapshot has no runnable job of the tenant before the head.
    """
    scan = (
        f"SELECT {alias}.id FROM {_TABLE} {alias} "
        f"WHERE {alias}.state = 'available' AND {queue_filter} "
        f"AND {alias}.tenant_id = {source}.tenant_id AND {{cond}} "
        f"ORDER BY {alias}.tenant_id, {alias}.priority DESC, {alias}.scheduled_at, {alias}.id "
        f"{tail}"
    )
    same = scan.replace(
        "{cond}",
        f"{alias}.priority = {source}.prio "
        f"AND ({alias}.scheduled_at, {alias}.id) >= ({source}.head, {source}.head_id)",
    )
    lower = scan.replace("{cond}", f"{alias}.priority < {source}.prio")
    # Each side in its own subquery: a locking clause may not sit on a UNION's arm.
    return f"SELECT * FROM ({same}) a UNION ALL SELECT * FROM ({lower}) b"


_BEFORE_AFTER = " AND j.tenant_id <= %(after)s"
_CLAIM_FAIR = f"""
WITH RECURSIVE ahead(tenant_id, head, prio, head_id, n) AS (
    (SELECT x.*, 1 FROM ({_next_busy("%(after)s")}) x)
    UNION ALL
    SELECT x.*, a.n + 1
    FROM ahead a CROSS JOIN LATERAL ({_next_busy("a.tenant_id")}) x
    WHERE a.n < %(window)s
), behind(tenant_id, head, prio, head_id, n) AS (
    (SELECT x.*, 1 FROM ({_next_busy("''", _BEFORE_AFTER)}) x
     WHERE (SELECT count(*) FROM ahead) < %(window)s)
    UNION ALL
    SELECT x.*, b.n + 1
    FROM behind b CROSS JOIN LATERAL ({_next_busy("b.tenant_id", _BEFORE_AFTER)}) x
    WHERE b.n + (SELECT count(*) FROM ahead) < %(window)s
), busy AS (
    SELECT tenant_id, head, prio, head_id FROM ahead
    UNION ALL SELECT tenant_id, head, prio, head_id FROM behind
), ctl AS (
    SELECT b.tenant_id, b.head, b.prio, b.head_id,
           coalesce(c.weight, 1) AS weight, coalesce(h.n, 0) AS held,
           lvl.level,
           greatest(0, least(
               %(limit)s,
               CASE WHEN c.max_running IS NULL THEN %(limit)s
                    ELSE c.max_running - (
                        SELECT count(*)::int FROM {_TABLE} r
                        WHERE r.tenant_id = b.tenant_id AND r.state = 'running')
               END,
               coalesce(floor(lvl.level + 1e-9)::int, %(limit)s))) AS allowance
    FROM busy b
    -- One primary-key probe per busy tenant (LIMIT 1 keeps the subquery from
    -- being flattened into a join): as a plain join, the planner, which cannot
    -- know how many tenants the window holds, hashed the whole control table,
    -- a row per tenant, at every claim (10,000 rows: a third of the claim).
    LEFT JOIN LATERAL (
        SELECT * FROM {_CONTROL} c WHERE c.tenant_id = b.tenant_id LIMIT 1
    ) c ON true
    LEFT JOIN unnest(%(held_tenants)s::text[], %(held_counts)s::float8[]) AS h(tenant_id, n)
           ON h.tenant_id = b.tenant_id
    CROSS JOIN LATERAL (
        SELECT CASE WHEN c.rate IS NOT NULL THEN least(
            c.burst,
            coalesce(c.tokens, c.burst)
            + extract(epoch FROM now() - coalesce(c.refilled_at, now()))::float8 * c.rate
        ) END AS level
    ) lvl
    WHERE NOT coalesce(c.paused, false)
      AND ((c.max_running IS NULL AND c.rate IS NULL) OR b.tenant_id = ANY(%(locked)s::text[]))
), firsts AS (
    SELECT * FROM ctl WHERE allowance > 0
    ORDER BY (held + 1)::float8 / weight, head, tenant_id
    LIMIT %(limit)s
), quota AS (
    SELECT s.tenant_id, s.prio, s.head, s.head_id, count(*)::int AS q FROM (
        SELECT f.tenant_id, f.prio, f.head, f.head_id FROM firsts f
        CROSS JOIN LATERAL (
            SELECT count(*)::int AS n FROM (
                SELECT 1 FROM ({_from_head("j", "f", "{queue_filter}", "LIMIT f.allowance")}) u
                LIMIT f.allowance
            ) s
        ) x
        CROSS JOIN LATERAL generate_series(1, x.n) AS k
        ORDER BY (f.held + k)::float8 / f.weight, f.head, f.tenant_id
        LIMIT %(limit)s
    ) s
    GROUP BY s.tenant_id, s.prio, s.head, s.head_id
), claimed AS (
    UPDATE {_TABLE} AS j
    SET state = 'running', attempt = j.attempt + 1, attempted_at = now(),
        lease_expires_at = now() + make_interval(secs => %(lease)s),
        lease_token = %(token)s, worker_id = %(worker)s
    WHERE j.id = ANY(ARRAY(
        SELECT p.id FROM quota CROSS JOIN LATERAL (
            SELECT u.id FROM ({
    _from_head("j2", "quota", "{queue_filter2}", "LIMIT quota.q FOR UPDATE SKIP LOCKED")
}) u
            LIMIT quota.q
        ) p
    ))
    RETURNING {_CLAIMED}
), spent AS (
    UPDATE {_CONTROL} AS c SET tokens = ctl.level - s.n, refilled_at = now()
    FROM (SELECT tenant_id, count(*)::int AS n FROM claimed GROUP BY tenant_id) s, ctl
    WHERE c.tenant_id = s.tenant_id AND ctl.tenant_id = s.tenant_id AND ctl.level IS NOT NULL
)
SELECT * FROM claimed
"""
# Claims for tenants with a concurrency or rate limit are serialised per
# tenant: this statement locks their control rows first (skipping rows another
# worker is claiming for right now), so the claim statement, whose snapshot is
# taken after, counts every job other workers started for them. Counting
# inside one statement alone could not see a concurrent claim's jobs.
_LOCK_LIMITED = f"""
SELECT c.tenant_id FROM {_CONTROL} c
WHERE (c.max_running IS NOT NULL OR c.rate IS NOT NULL) AND NOT c.paused{{tenant_filter}}
  AND EXISTS (
      SELECT 1 FROM {_TABLE} j
      WHERE j.tenant_id = c.tenant_id AND j.state = 'available' AND {{queue_filter}}
  )
ORDER BY c.tenant_id
FOR UPDATE OF c SKIP LOCKED
"""
# Lease statements fence on the token: one statement per token (a claimed
# batch shares one), reaching the rows by primary key (``id = ANY``). Joining
# against unnest(ids, tokens) instead left the plan to statistics: one scanned
# the whole partial lease index (an entry for every job ever claimed until
# vacuum: 7.7 ms to complete 100 jobs after 20,000 claims), another rescanned
# the unnest per row (quadratic). ``IS TRUE`` keeps the state test from
# matching that partial index.
_FENCE = (
    "j.id = ANY(%(ids)s::bigint[]) AND j.lease_token = %(token)s AND (j.state = 'running') IS TRUE"
)
_COMPLETE = f"""
UPDATE {_TABLE} AS j
SET state = 'completed', finished_at = now(), lease_expires_at = NULL, lease_token = NULL
WHERE {_FENCE}
RETURNING j.id
"""
_EXTEND = f"""
UPDATE {_TABLE} AS j SET lease_expires_at = now() + make_interval(secs => %(lease)s)
WHERE {_FENCE}
RETURNING j.id
"""
_RELEASE = f"""
UPDATE {_TABLE} AS j
SET state = 'available', attempt = j.attempt - 1, lease_expires_at = NULL,
    lease_token = NULL, worker_id = NULL
WHERE {_FENCE}
RETURNING j.id
"""


_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_NULL_FIELD = struct.pack(">i", -1)
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
#: A row's start: its field count, the id (int8) field, the payload's length.
_ROW_HEAD = struct.Struct(">hiqi")


def _binary_field(kind: str, value: Any, encoding: str) -> bytes:
    """One field in ``COPY``'s binary format: its length, then its value."""
    if value is None:
        return _NULL_FIELD
    if kind == "text":
        data = str(value).encode(encoding)
    elif kind == "smallint":
        data = struct.pack(">h", value)
    elif kind == "integer":
        data = struct.pack(">i", value)
    elif kind == "timestamptz":
        # Microseconds since 2000-01-01 UTC; the value is timezone-aware.
        delta = value - _PG_EPOCH
        data = struct.pack(
            ">q", (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        )
    elif kind == "jsonb":
        data = b"\x01" + json.dumps(value).encode()
    else:  # pragma: no cover - _BULK_COLUMNS names only the kinds above
        raise AssertionError(f"no binary COPY format for {kind}")
    return struct.pack(">i", len(data)) + data


def _copy_binary(ids: list[int], rows: NewJobs, encoding: str) -> Iterator[bytes]:
    """The rows as binary ``COPY`` data, in chunks of rows.

    Binary, because then PostgreSQL parses only the payload's JSON: the text
    format had it parse two timestamps, the errors' JSON and three integers
    per row as well, about 13% of the server's CPU time for the COPY
    (20,000 rows, measured on the backend process; 15% more jobs/s end to
    end). Every column but id and payload is the same for the whole batch,
    so the rest of a row is encoded once; the payload is JSON text already
    (``Handler.json_text``, ASCII), which ``jsonb``'s binary input reads
    after a version byte.
    """
    yield _COPY_SIGNATURE
    fields = 2 + len(_COPY_SHARED)
    common = rows.common
    tail = b"".join(_binary_field(_KINDS[c], common[c], encoding) for c in _COPY_SHARED)
    pack = _ROW_HEAD.pack
    for start in range(0, len(ids), _COPY_CHUNK):
        chunk = ids[start : start + _COPY_CHUNK]
        texts = rows.payload_texts(start, start + _COPY_CHUNK)
        yield b"".join(
            [
                b"%b\x01%b%b" % (pack(fields, 8, i, len(t) + 1), t, tail)
                for i, t in zip(chunk, texts, strict=True)
            ]
        )
    yield _COPY_TRAILER


async def _copy_async(raw: psycopg.AsyncConnection[Any], ids: list[int], rows: NewJobs) -> None:
    async with raw.cursor() as cur, cur.copy(_COPY) as copy:
        for data in _copy_binary(ids, rows, raw.info.encoding):
            await copy.write(data)


def _fetch(conn: Connection, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """Run *sql* on the DBAPI cursor and return plain tuples.

    SQLAlchemy's result layer (a Row per row, its metadata per statement) cost
    more than the claim statement itself for a batch of 100 jobs. Errors still
    reach callers as SQLAlchemy's exception types, and a connection found dead
    is invalidated so the pool never hands it out again.
    """
    proxied = conn.connection
    cursor = proxied.cursor()
    try:
        cursor.execute(sql, params)
        return list(cursor.fetchall())
    except psycopg.Error as exc:
        error, gone = _translated(exc, proxied.driver_connection, sql, params, conn.dialect)
        if gone:
            conn.invalidate(exc)
        raise error from exc
    finally:
        cursor.close()


def _fenced(
    conn: Connection, sql: str, leases: Sequence[Lease], extra: Mapping[str, Any] | None = None
) -> set[int]:
    """Run a lease statement per token; the ids of the rows whose lease still held."""
    done: set[int] = set()
    for params in _by_token(leases):
        done.update(int(r[0]) for r in _fetch(conn, sql, {**params, **(extra or {})}))
    return done


def _claimed_jobs(rows: Iterable[tuple[Any, ...]], token: str, worker_id: str) -> list[Job]:
    """Jobs from ``_CLAIMED`` tuples (timestamps come timezone-aware from psycopg).

    Filled in place of the frozen ``__init__`` (one guarded ``object.__setattr__``
    per field), with the payload left as JSON text (``PAYLOAD_TEXT``): the
    worker's validation parses it.
    """
    loads = json.loads
    running = JobState.RUNNING
    new = object.__new__
    jobs: list[Job] = []
    for (
        job_id,
        tenant_id,
        queue,
        kind,
        payload,
        priority,
        attempt,
        max_attempts,
        scheduled_at,
        created_at,
        attempted_at,
        lease_expires_at,
        errors,
        idempotency_key,
        correlation_id,
    ) in rows:
        job = new(Job)
        job.__dict__.update(
            id=job_id,
            tenant_id=tenant_id,
            queue=queue,
            kind=kind,
            priority=priority,
            state=running,
            attempt=attempt,
            max_attempts=max_attempts,
            scheduled_at=scheduled_at,
            created_at=created_at,
            attempted_at=attempted_at,
            finished_at=None,
            lease_expires_at=lease_expires_at,
            lease_token=token,
            worker_id=worker_id,
            errors=loads(errors) if errors is not None else [],
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
            _payload_text=payload,
        )
        jobs.append(job)
    return jobs


def _by_token(leases: Sequence[Lease]) -> list[dict[str, Any]]:
    """Parameters of the lease statements: one set per token, in first-seen order."""
    ids: dict[str, list[int]] = {}
    for job_id, token in leases:
        ids.setdefault(token, []).append(job_id)
    return [{"ids": v, "token": k} for k, v in ids.items()]


# Bulk enqueue: one INSERT over parallel arrays (one bound parameter per
# column, however many rows), like River's and pgqueuer's UNNEST inserts.
_BULK_COLUMNS: tuple[tuple[str, str], ...] = (
    ("tenant_id", "text"),
    ("queue", "text"),
    ("kind", "text"),
    ("payload", "jsonb"),
    ("priority", "smallint"),
    ("state", "text"),
    ("attempt", "integer"),
    ("max_attempts", "integer"),
    ("scheduled_at", "timestamptz"),
    ("errors", "jsonb"),
    ("idempotency_key", "text"),
    ("correlation_id", "text"),
    ("created_at", "timestamptz"),
)
_BULK_INSERT = (
    f"INSERT INTO {_TABLE} ({', '.join(c for c, _ in _BULK_COLUMNS)}) "
    f"SELECT {', '.join(f'{c}::{t}' for c, t in _BULK_COLUMNS)} FROM unnest("
    + ", ".join(f"%({c})s::{'text' if t == 'jsonb' else t}[]" for c, t in _BULK_COLUMNS)
    + f") WITH ORDINALITY AS r({', '.join(c for c, _ in _BULK_COLUMNS)}, n) "
    "ORDER BY n RETURNING id"
)


# The same INSERT and the NOTIFY in one statement: an enqueue outside a
# transaction is then one round trip. The uncorrelated subquery is a one-time
# filter, run once per statement whatever the number of rows.
_BULK_INSERT_NOTIFY = (
    f"WITH ins AS ({_BULK_INSERT}), "
    "wake AS (SELECT pg_notify(%(channel)s, q) FROM unnest(%(wake)s::text[]) AS q) "
    "SELECT id FROM ins WHERE (SELECT count(*) FROM wake) >= 0"
)


# One job outside a transaction: one row, scalar parameters (dumping them is
# far cheaper than dumping thirteen one-element arrays), and the NOTIFY in
# the same statement, so the autocommitted statement is the transaction. The
# casts fix the parameter types, so psycopg's prepared statement (after five
# runs on a connection) is one whatever the values.
_INSERT_ONE_NOTIFY = (
    f"WITH ins AS (INSERT INTO {_TABLE} ({', '.join(c for c, _ in _BULK_COLUMNS)}) "
    f"VALUES ({', '.join(f'%s::{t}' for _, t in _BULK_COLUMNS)}) RETURNING id) "
    "SELECT id, pg_notify(%s, %s) FROM ins"
)


def _one_row_params(rows: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The positional parameters of ``_INSERT_ONE_NOTIFY`` for the one row of *rows*."""
    if isinstance(rows, NewJobs):
        row: Mapping[str, Any] = rows.common
        payload = rows.payload_texts()[0].decode()
    else:
        row = rows[0]
        payload = json.dumps(row["payload"])
    params = [
        payload
        if column == "payload"
        else json.dumps(row[column])
        if kind == "jsonb"
        else row.get(column)
        for column, kind in _BULK_COLUMNS
    ]
    params += [CHANNEL, row["queue"]]
    return params


# The same one-row statement at libpq's level, prepared once per connection
# under a name of tenantry's own ($n placeholders, text parameters).
_ONE_NAME = b"tenantry_enqueue_one"
_ONE_SQL = "".join(
    f"${i}{part}" if i else part for i, part in enumerate(_INSERT_ONE_NOTIFY.split("%s"))
)
#: Set in a pooled connection's ``info`` once ``_ONE_NAME`` is prepared on it.
_ONE_PREPARED = "tenantry_enqueue_one_prepared"
_IDLE = psycopg.pq.TransactionStatus.IDLE


def _text_params(params: list[Any], encoding: str) -> list[bytes | None] | None:
    """*params* in PostgreSQL's text input format; None if one holds a NUL.

    libpq reads a text parameter up to its first NUL: such a value takes
    psycopg's path, which refuses it with psycopg's own error.
    """
    values: list[bytes | None] = []
    for value in params:
        if value is None:
            values.append(None)
            continue
        text = value.isoformat() if isinstance(value, datetime) else str(value)
        if "\x00" in text:
            return None
        values.append(text.encode(encoding))
    return values


def _result_error(result: psycopg.pq.abc.PGresult, raw: psycopg.Connection[Any]) -> psycopg.Error:
    """The error a failed libpq result stands for, as psycopg would raise it."""
    if raw.pgconn.status == psycopg.pq.ConnStatus.BAD:
        # libpq's own result for a lost server has no SQLSTATE; psycopg
        # raises OperationalError for it, and so do we.
        message = result.error_message.decode(raw.info.encoding, "replace").strip()
        return psycopg.OperationalError(f"the connection was lost: {message}")
    return psycopg.errors.error_from_result(result, encoding=raw.info.encoding)


def _insert_one(fairy: Any, raw: psycopg.Connection[Any], values: list[bytes | None]) -> int:
    """Run the prepared one-row statement with libpq and return the job's id.

    psycopg's own execute (its query conversion, its statement cache, its
    result objects) cost about 110 microseconds of CPU per statement here;
    ``PQexecPrepared`` costs 40. The statement alone went from 431 to 333
    microseconds a job, a whole ``Queue.enqueue`` about 55 less (batches of
    100 interleaved; faster in 73% of 200 pairs). libpq releases the GIL
    while it waits, as psycopg does. The connection is idle (not in a
    transaction), so the statement commits on its own.
    """
    if not fairy.info.get(_ONE_PREPARED):
        _prepare_one(fairy, raw)
    # None is NULL to libpq, as psycopg's own calls pass it; the stub omits it.
    result = raw.pgconn.exec_prepared(_ONE_NAME, values)  # type: ignore[arg-type]
    if result.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"26000":
        # Deallocated under us (DISCARD ALL, say): prepare it again, once.
        _prepare_one(fairy, raw)
        result = raw.pgconn.exec_prepared(_ONE_NAME, values)  # type: ignore[arg-type]
    if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
        raise _result_error(result, raw)
    return int(result.get_value(0, 0) or b"")


def _prepare_one(fairy: Any, raw: psycopg.Connection[Any]) -> None:
    prepared = raw.pgconn.prepare(_ONE_NAME, _ONE_SQL.encode())
    if prepared.status != psycopg.pq.ExecStatus.COMMAND_OK:
        raise _result_error(prepared, raw)
    fairy.info[_ONE_PREPARED] = True


def _queues_of(rows: Sequence[Mapping[str, Any]]) -> set[str]:
    return {rows.queue} if isinstance(rows, NewJobs) else {r["queue"] for r in rows}


def _translated(
    exc: psycopg.Error, raw: Any, statement: str, params: Any, dialect: Dialect
) -> tuple[DBAPIError, bool]:
    """*exc* as SQLAlchemy would raise it, and whether the connection is gone.

    The standalone path runs on the driver's connection, past SQLAlchemy's
    error handling; callers (``_reported_unavailable``) expect its exception
    classes (``OperationalError``, ``IntegrityError``...) and its
    ``connection_invalidated``, as the generic path gives them.
    """
    gone = dialect.is_disconnect(exc, raw, None)  # type: ignore[arg-type]  # psycopg is the DBAPI
    error = DBAPIError.instance(
        statement, params, exc, psycopg.Error, connection_invalidated=gone, dialect=dialect
    )
    assert isinstance(error, DBAPIError)
    return error, gone


# Bulk enqueue through tenantry's own connection: COPY, about twice the rate of
# the INSERT above (measured 91-130k against 47-55k rows/s for 20,000 rows).
# COPY returns no ids, so they are drawn from the sequence first, in order.
#: Columns every row of one ``enqueue_many`` shares; a COPY line is id, payload, these.
_COPY_SHARED = tuple(c for c, _ in _BULK_COLUMNS if c != "payload")
_COPY = f"COPY {_TABLE} (id, payload, {', '.join(_COPY_SHARED)}) FROM STDIN (FORMAT binary)"
_KINDS = dict(_BULK_COLUMNS)
# Rows per write: the server writes each chunk (heap, indexes) while the next
# one is serialized here, so a small first chunk starts it early; bounded memory.
_COPY_CHUNK = 1000
# The sequence is looked up once (the OFFSET 0 keeps the planner from pulling
# the lookup into the per-row call): looked up per row, the lookup was 90% of
# drawing the ids (60 ms against 7 for 20,000 ids).
_NEXT_IDS = (
    "SELECT array(SELECT nextval(s.seq) FROM "
    f"(SELECT pg_get_serial_sequence('{_TABLE}', 'id')::regclass AS seq OFFSET 0) AS s, "
    "generate_series(1, %(n)s))"
)
#: Fewer rows than this go in with the one-statement INSERT (one round trip).
COPY_MIN_ROWS = 200


class PostgresBackend(QueueBackend):
    dialect: ClassVar[str] = "postgresql"

    def writes_in_one_statement(self, rows: Sequence[Mapping[str, Any]]) -> bool:
        return len(rows) < COPY_MIN_ROWS and is_keyless(rows)

    def claims_in_one_statement(self, *, fair: bool) -> bool:
        # The fair claim first locks the control rows of limited tenants.
        return not fair

    @contextmanager
    def claim_connection(self, engine: Engine, *, alone: bool) -> Iterator[Connection]:
        """An idle worker's claim in one round trip instead of three.

        psycopg opens a transaction with a ``BEGIN`` of its own round trip,
        and ``COMMIT`` is another: on an idle worker they were a third of the
        time from a job's NOTIFY to its handler. Autocommit is switched on the
        driver's connection (SQLAlchemy's isolation switch costs more than the
        round trips saved) and back before the connection returns to the pool;
        one that cannot be switched back is invalidated.
        """
        if not alone:
            with engine.begin() as conn:
                yield conn
            return
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert isinstance(raw, psycopg.Connection)
            raw.autocommit = True
            try:
                yield conn
            finally:
                try:
                    if not conn.invalidated:
                        raw.autocommit = False
                except Exception as exc:
                    conn.invalidate(exc)

    def _one_statement(self, rows: Sequence[Mapping[str, Any]]) -> tuple[str, Any]:
        """The statement (and parameters) that writes *rows* and wakes their workers."""
        if len(rows) == 1:
            return _INSERT_ONE_NOTIFY, _one_row_params(rows)
        params = self._bulk_params(rows)
        params.update(channel=CHANNEL, wake=sorted(_queues_of(rows)))
        return _BULK_INSERT_NOTIFY, params

    def write_standalone(
        self, engine: Engine, rows: Sequence[dict[str, Any]]
    ) -> Sequence[Inserted]:
        """One autocommitted statement on the pooled connection's psycopg connection.

        The same single round trip as the generic path, without SQLAlchemy's
        per-statement work (statement wrapping, result objects, switching the
        isolation level and back), which cost most of a standalone enqueue.
        The connection is switched to autocommit for this one statement and
        back before it returns to the pool; one that is broken, or cannot be
        switched back, is invalidated instead, so the pool never hands out a
        dead or autocommitting connection (the COPY path needs a transaction).
        """
        if not self.writes_in_one_statement(rows):
            return super().write_standalone(engine, rows)
        statement, params = self._one_statement(rows)
        try:
            fairy = engine.raw_connection()
        except psycopg.Error as exc:
            # Could not connect: wrapped as ``engine.connect()`` would have.
            raise DBAPIError.instance(
                None, None, exc, psycopg.Error, dialect=engine.dialect
            ) from exc
        raw = fairy.driver_connection
        assert isinstance(raw, psycopg.Connection)
        switched = False
        try:
            # A connection told not to prepare (``prepare_threshold=None``, as
            # behind a transaction-mode pooler) keeps psycopg's unprepared path.
            if (
                len(rows) == 1
                and raw.prepare_threshold is not None
                and raw.pgconn.transaction_status == _IDLE
            ):
                values = _text_params(params, raw.info.encoding)
                if values is not None:
                    return Created([_insert_one(fairy, raw, values)])
            switched = True
            raw.autocommit = True
            found = raw.execute(statement, params).fetchall()
        except psycopg.Error as exc:
            error, gone = _translated(exc, raw, statement, params, engine.dialect)
            if gone:
                fairy.invalidate(exc)
            raise error from exc
        finally:
            try:
                if switched and fairy.is_valid:
                    raw.autocommit = False
            except Exception as exc:
                fairy.invalidate(exc)
            fairy.close()
        return Created(sorted(int(r[0]) for r in found))

    async def awrite_standalone(
        self, engine: AsyncEngine, rows: Sequence[dict[str, Any]]
    ) -> Sequence[Inserted]:
        """``write_standalone`` on the async driver connection (``psycopg.AsyncConnection``)."""
        if not self.writes_in_one_statement(rows):
            return await super().awrite_standalone(engine, rows)
        statement, params = self._one_statement(rows)
        async with engine.connect() as aconn:
            fairy = await aconn.get_raw_connection()
            raw = fairy.driver_connection
            assert isinstance(raw, psycopg.AsyncConnection)
            try:
                await raw.set_autocommit(True)
                found = await (await raw.execute(statement, params)).fetchall()
            except psycopg.Error as exc:
                error, gone = _translated(exc, raw, statement, params, engine.dialect)
                if gone:
                    await aconn.invalidate(exc)
                raise error from exc
            finally:
                try:
                    if not aconn.invalidated:
                        await raw.set_autocommit(False)
                except Exception as exc:
                    await aconn.invalidate(exc)
        return Created(sorted(int(r[0]) for r in found))

    def write_jobs(
        self, conn: Connection, rows: Sequence[dict[str, Any]], *, owner: bool = False
    ) -> Sequence[Inserted]:
        keyless = is_keyless(rows)
        if owner and keyless and isinstance(rows, NewJobs) and len(rows) >= COPY_MIN_ROWS:
            return self._copy_jobs(conn, rows)
        if not keyless:
            return super().write_jobs(conn, rows)
        params = self._bulk_params(rows)
        params.update(channel=CHANNEL, wake=sorted(_queues_of(rows)))
        ids = conn.exec_driver_sql(_BULK_INSERT_NOTIFY, params).scalars()
        return Created(sorted(int(i) for i in ids))

    def _copy_jobs(self, conn: Connection, rows: NewJobs) -> Created:
        """COPY the rows in; only on tenantry's own (owner) connection.

        ``COPY FROM`` is refused on a table with row-level security for roles
        it applies to, so a tenant session (or a caller's connection) takes
        the INSERT path instead.
        """
        ids: list[int] = conn.exec_driver_sql(_NEXT_IDS, {"n": len(rows)}).scalar_one()
        raw = conn.connection.driver_connection
        try:
            if isinstance(raw, psycopg.AsyncConnection):
                await_only(_copy_async(raw, ids, rows))
            else:
                assert isinstance(raw, psycopg.Connection)
                with raw.cursor() as cur, cur.copy(_COPY) as copy:
                    for data in _copy_binary(ids, rows, raw.info.encoding):
                        copy.write(data)
        except psycopg.Error as exc:
            # COPY runs on the driver's connection: its errors are made
            # SQLAlchemy's here, as every other enqueue path raises them.
            error, gone = _translated(exc, raw, _COPY, None, conn.dialect)
            if gone:
                conn.invalidate(exc)
            raise error from exc
        self.notify(conn, _queues_of(rows))
        return Created(ids)

    @staticmethod
    def _bulk_params(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if isinstance(rows, NewJobs):
            n, common = len(rows), rows.common
            for column, kind in _BULK_COLUMNS:
                value = json.dumps(common[column]) if kind == "jsonb" else common[column]
                params[column] = [value] * n
            params["payload"] = [t.decode() for t in rows.payload_texts()]
            return params
        for column, kind in _BULK_COLUMNS:
            if kind == "jsonb":
                params[column] = [json.dumps(row.get(column)) for row in rows]
            else:
                params[column] = [row.get(column) for row in rows]
        return params

    def insert_many_ids(self, conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
        """One INSERT ... SELECT FROM unnest(arrays) for any number of rows.

        Rows are inserted in array order, so identity values are assigned in
        that order too: the returned ids, sorted, pair with the rows.
        """
        ids = conn.exec_driver_sql(_BULK_INSERT, self._bulk_params(rows)).scalars()
        return sorted(int(i) for i in ids)

    def claim_fifo(
        self,
        conn: Connection,
        *,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        tenants: Sequence[str] | None,
    ) -> list[Job]:
        # One queue: a plain equality keeps the ordered partial-index scan.
        queue_filter = "queue = %(queue)s" if len(queues) == 1 else "queue = ANY(%(queues)s)"
        tenant_filter = " AND tenant_id = ANY(%(tenants)s)" if tenants is not None else ""
        sql = _CLAIM.format(queue_filter=queue_filter, tenant_filter=tenant_filter)
        token = str(uuid.uuid4())
        params = {
            "queue": queues[0],
            "queues": list(queues),
            "tenants": list(tenants or ()),
            "limit": limit,
            "lease": lease_seconds,
            "token": token,
            "worker": worker_id,
        }
        jobs = _claimed_jobs(_fetch(conn, sql, params), token, worker_id)
        jobs.sort(key=lambda j: (-j.priority, j.scheduled_at, j.id))
        return jobs

    def claim_fair(
        self,
        conn: Connection,
        *,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        tenants: Sequence[str] | None,
        held: Mapping[str, float] | None = None,
        check_limits: bool = True,
        after: str = "",
    ) -> list[Job]:
        # ``IS TRUE`` keeps the queue filter from being an index condition. As
        # one, it let a per-tenant scan (``tenant_id = x``, so ordered by
        # priority, scheduled_at, id) run on the FIFO index (queue, priority,
        # scheduled_at, id) without a sort, filtering tenant_id: reading every
        # other tenant's runnable jobs on the way. A generic plan made before
        # the table had statistics chose that (a regression test has it).
        # Now only ix_tenantry_jobs_fair serves these scans without a sort.
        queue_filter = (
            "(j.queue = %(queue)s) IS TRUE"
            if len(queues) == 1
            else "(j.queue = ANY(%(queues)s)) IS TRUE"
        )
        params: dict[str, Any] = {
            "queue": queues[0],
            "queues": list(queues),
            "tenants": list(tenants or ()),
            "held_tenants": list(held or ()),
            "held_counts": [float(v) for v in (held or {}).values()],
        }
        # Plan once, not per batch: planning this statement costs more than
        # running it. Every predicate the partial indexes need is a literal, so
        # the generic plan uses them (tests check the plan in both modes). The
        # worker's claim engine sets these per connection, saving a round trip;
        # see CLAIM_SESSION_SETTINGS for why each is set.
        if not conn.get_execution_options().get("tenantry_generic_plans"):
            conn.exec_driver_sql(pg.CLAIM_SET_LOCAL)
        locked: list[str] = []
        if check_limits:
            lock_sql = _LOCK_LIMITED.format(
                queue_filter=queue_filter,
                tenant_filter=" AND c.tenant_id = ANY(%(tenants)s)" if tenants is not None else "",
            )
            locked = list(conn.exec_driver_sql(lock_sql, params).scalars())
        sql = _CLAIM_FAIR.format(
            queue_filter=queue_filter,
            queue_filter2=queue_filter.replace("j.queue", "j2.queue"),
            tenant_filter=" AND j.tenant_id = ANY(%(tenants)s)" if tenants is not None else "",
        )
        params.update(
            after=after,
            window=max(FAIR_WINDOW, limit),
            locked=locked,
            limit=limit,
            lease=lease_seconds,
            token=str(uuid.uuid4()),
            worker=worker_id,
        )
        return interleave(_claimed_jobs(_fetch(conn, sql, params), params["token"], worker_id))

    def complete(self, conn: Connection, leases: Sequence[Lease]) -> set[int]:
        if not leases:
            return set()
        return _fenced(conn, _COMPLETE, leases)

    def extend_leases(
        self, conn: Connection, leases: Sequence[Lease], lease_seconds: float
    ) -> set[int]:
        if not leases:
            return set()
        return _fenced(conn, _EXTEND, leases, {"lease": lease_seconds})

    def release(self, conn: Connection, leases: Sequence[Lease]) -> set[int]:
        if not leases:
            return set()
        return _fenced(conn, _RELEASE, leases)

    def now(self) -> ColumnElement[datetime]:
        # Server time, so leases mean the same thing to every worker host.
        return func.now()

    def now_plus(self, seconds: float) -> ColumnElement[datetime]:
        return func.now() + literal(timedelta(seconds=seconds))

    def insert(self) -> Insert:
        return pg_insert(jobs_table)

    def greatest(self, *values: Any) -> ColumnElement[int]:
        return func.greatest(*values)

    def lock_for_claim(self, query: Any) -> Any:
        return query.with_for_update(skip_locked=True)

    def notify(self, conn: Connection, queues: Iterable[str]) -> None:
        # One NOTIFY per enqueue statement; PostgreSQL also folds identical
        # notifications within a transaction, so a bulk enqueue wakes once.
        for queue in sorted(set(queues)):
            conn.execute(text("SELECT pg_notify(:c, :q)"), {"c": CHANNEL, "q": queue})

    def ensure_schema(self, conn: Connection, rls_role: str, app_user: str | None) -> None:
        """The jobs table, its grants and its row-level security.

        RLS on jobs is ENABLEd but not FORCEd: tenant sessions (the RLS role) see
        and enqueue only their own tenant's jobs, while the worker, connecting as
        the owner through the admin URL, claims across tenants.
        """
        pg.ddl_lock(conn)  # concurrent set-ups (two workers starting) would race
        conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {TENANTRY_SCHEMA}")
        create_queue_tables(conn)
        pg.ensure_policy(conn, jobs_table.name, TENANTRY_SCHEMA, force=False)
        # Only the jobs table: the catalog in the same schema stays admin-only.
        pg.grant_access(conn, TENANTRY_SCHEMA, rls_role, app_user, table=jobs_table.name)

"""The PostgreSQL driver: ``FOR UPDATE SKIP LOCKED`` claims, server time, LISTEN/NOTIFY.

Wiring only: the statement texts are in ``queries``, the claimed-row builder
in ``rows``, the bulk COPY in ``copy`` and the libpq one-row enqueue in
``fast_insert``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any, ClassVar

import psycopg
from sqlalchemy import Connection, Engine, func
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantry.queue.drivers.base import (
    ClaimRequest,
    Created,
    Inserted,
    Lease,
    NewJobs,
    is_keyless,
    queues_of,
)
from tenantry.queue.drivers.core import (
    CoreSql,
    Flavour,
    awrite_in_transaction,
    write_in_transaction,
)
from tenantry.queue.drivers.postgres import queries as q
from tenantry.queue.drivers.postgres.copy import COPY_MIN_ROWS, copy_jobs
from tenantry.queue.drivers.postgres.fast_insert import (
    IDLE,
    insert_one,
    one_row_params,
    text_params,
    translated,
)
from tenantry.queue.drivers.postgres.rows import WRITTEN, claimed_jobs
from tenantry.queue.fairness import FAIR_WINDOW, interleave
from tenantry.queue.job import Job
from tenantry.queue.schema import create_queue_tables, jobs_table
from tenantry.tenancy.binding import OWN_SQL_OPTION
from tenantry.tenancy.isolation import postgres as pg
from tenantry.tenancy.models import TENANTRY_SCHEMA


def fetch(conn: Connection, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """Run *sql* on the DBAPI cursor and return plain tuples.

    SQLAlchemy's result layer (a Row per row, its metadata per statement)
    cost more than the claim statement itself. Errors still reach callers as
    SQLAlchemy's exception types, and a connection found dead is invalidated
    so the pool never hands it out again.
    """
    proxied = conn.connection
    cursor = proxied.cursor()
    try:
        cursor.execute(sql, params)
        return list(cursor.fetchall())
    except psycopg.Error as exc:
        error, gone = translated(exc, proxied.driver_connection, sql, params, conn.dialect)
        if gone:
            conn.invalidate(exc)
        raise error from exc
    finally:
        cursor.close()


@contextmanager
def _autocommitted(conn: Connection) -> Iterator[psycopg.Connection[Any]]:
    """psycopg in autocommit for the life of the block: tenantry sends BEGIN/COMMIT itself."""
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    raw.autocommit = True
    try:
        yield raw
    finally:
        try:
            if not conn.invalidated:
                raw.autocommit = False
        except Exception as exc:
            conn.invalidate(exc)


def _run_raw(conn: Connection, raw: psycopg.Connection[Any], sql: str) -> None:
    """Run *sql* (no parameters: the simple protocol, several statements allowed) on *raw*.

    Errors reach callers as SQLAlchemy's exception types, and a connection
    found dead is invalidated, as in :func:`fetch`.
    """
    try:
        raw.execute(sql)
    except psycopg.Error as exc:
        error, gone = translated(exc, raw, sql, {}, conn.dialect)
        if gone:
            conn.invalidate(exc)
        raise error from exc


def _fenced(
    conn: Connection, sql: str, leases: Sequence[Lease], extra: Mapping[str, Any] | None = None
) -> set[int]:
    """Run a lease statement per token; the ids of the rows whose lease still held."""
    done: set[int] = set()
    for params in _by_token(leases):
        done.update(int(r[0]) for r in fetch(conn, sql, {**params, **(extra or {})}))
    return done


def _by_token(leases: Sequence[Lease]) -> list[dict[str, Any]]:
    """Parameters of the lease statements: one set per token, in first-seen order."""
    ids: dict[str, list[int]] = {}
    for job_id, token in leases:
        ids.setdefault(token, []).append(job_id)
    return [{"ids": v, "token": k} for k, v in ids.items()]


def _bulk_params(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``BULK_INSERT``'s parameters: one array per column."""
    params: dict[str, Any] = {}
    if isinstance(rows, NewJobs):
        n, common = len(rows), rows.common
        for column, kind in WRITTEN:
            value = json.dumps(common[column]) if kind == "jsonb" else common[column]
            params[column] = [value] * n
        params["payload"] = [t.decode() for t in rows.payload_texts()]
        return params
    for column, kind in WRITTEN:
        if kind == "jsonb":
            params[column] = [json.dumps(row.get(column)) for row in rows]
        else:
            params[column] = [row.get(column) for row in rows]
    return params


def _insert_many_ids(conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
    """``BULK_INSERT`` for any number of rows; the ids, sorted, pair with the rows."""
    ids = conn.exec_driver_sql(q.BULK_INSERT, _bulk_params(rows), OWN_SQL).scalars()
    return sorted(int(i) for i in ids)


#: The enqueue statements run on the caller's session connection: tenantry's own
#: SQL, which leaves no session state behind (no DISCARD ALL at check-in).
OWN_SQL = {OWN_SQL_OPTION: True}


class PostgresDriver(CoreSql):
    dialect: ClassVar[str] = "postgresql"
    write_options: ClassVar[Mapping[str, Any]] = {}

    def __init__(self) -> None:
        super().__init__(
            Flavour(
                # Server time, so leases mean the same thing to every worker host.
                now=func.now,
                insert=lambda: pg_insert(jobs_table),
                greatest=func.greatest,
                lock=lambda query: query.with_for_update(skip_locked=True),
            )
        )

    def ensure_schema(self, conn: Connection, grantee: str) -> None:
        """The jobs table, its grants and its row-level security.

        RLS on jobs is ENABLEd but not FORCEd: tenant sessions (the RLS role) see
        and enqueue only their own tenant's jobs, while the worker, connecting as
        the owner through the admin URL, claims across tenants.
        """
        pg.ddl_lock(conn)  # concurrent set-ups (two workers starting) would race
        conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {TENANTRY_SCHEMA}")
        create_queue_tables(conn)
        pg.ensure_policy(conn, jobs_table.name, TENANTRY_SCHEMA, force=False, stamp=False)
        # Only the jobs table: the catalog in the same schema stays admin-only.
        pg.grant_access(conn, TENANTRY_SCHEMA, grantee, table=jobs_table.name)

    # -- enqueue -------------------------------------------------------------------
    @staticmethod
    def _in_one_statement(rows: Sequence[Mapping[str, Any]]) -> bool:
        """Whether writing *rows* is one statement, atomic without a transaction."""
        return len(rows) < COPY_MIN_ROWS and is_keyless(rows)

    @staticmethod
    def _one_statement(rows: Sequence[Mapping[str, Any]]) -> tuple[str, Any]:
        """The statement (and parameters) that writes *rows* and wakes their workers."""
        if len(rows) == 1:
            return q.INSERT_ONE_NOTIFY, one_row_params(rows)
        params = _bulk_params(rows)
        params.update(channel=q.CHANNEL, wake=sorted(queues_of(rows)))
        return q.BULK_INSERT_NOTIFY, params

    def write_jobs(
        self, conn: Connection, rows: Sequence[dict[str, Any]], *, owner: bool = False
    ) -> Sequence[Inserted]:
        keyless = is_keyless(rows)
        if owner and keyless and isinstance(rows, NewJobs) and len(rows) >= COPY_MIN_ROWS:
            copied = copy_jobs(conn, rows)
            self._notify(conn, queues_of(rows))
            return Created(copied)
        if not keyless:
            inserted = self.insert_jobs(conn, rows, _insert_many_ids)
            self._notify(conn, {r["queue"] for r in rows})
            return inserted
        params = _bulk_params(rows)
        params.update(channel=q.CHANNEL, wake=sorted(queues_of(rows)))
        ids = conn.exec_driver_sql(q.BULK_INSERT_NOTIFY, params, OWN_SQL).scalars()
        return Created(sorted(int(i) for i in ids))

    def write_standalone(
        self, engine: Engine, rows: Sequence[dict[str, Any]]
    ) -> Sequence[Inserted]:
        """One autocommitted statement on the pooled connection's psycopg connection.

        The same single round trip as a transaction's statement, without
        SQLAlchemy's per-statement work (statement wrapping, result objects,
        switching the isolation level and back), which cost most of a
        standalone enqueue. The connection is switched to autocommit for this
        one statement and back before it returns to the pool; one that is
        broken, or cannot be switched back, is invalidated instead, so the
        pool never hands out a dead or autocommitting connection (the COPY
        path needs a transaction).
        """
        if not self._in_one_statement(rows):
            return write_in_transaction(self.write_jobs, engine, rows)
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
                and raw.pgconn.transaction_status == IDLE
            ):
                values = text_params(params, raw.info.encoding)
                if values is not None:
                    return Created([insert_one(fairy, raw, values)])
            switched = True
            raw.autocommit = True
            found = raw.execute(statement, params).fetchall()
        except psycopg.Error as exc:
            error, gone = translated(exc, raw, statement, params, engine.dialect)
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
        if not self._in_one_statement(rows):
            return await awrite_in_transaction(self.write_jobs, engine, rows)
        statement, params = self._one_statement(rows)
        async with engine.connect() as aconn:
            fairy = await aconn.get_raw_connection()
            raw = fairy.driver_connection
            assert isinstance(raw, psycopg.AsyncConnection)
            try:
                await raw.set_autocommit(True)
                found = await (await raw.execute(statement, params)).fetchall()
            except psycopg.Error as exc:
                error, gone = translated(exc, raw, statement, params, engine.dialect)
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

    def _notify(self, conn: Connection, queues: Iterable[str]) -> None:
        # One NOTIFY per enqueue statement; PostgreSQL also folds identical
        # notifications within a transaction, so a bulk enqueue wakes once.
        for queue in sorted(set(queues)):
            conn.exec_driver_sql(q.NOTIFY, {"channel": q.CHANNEL, "queue": queue}, OWN_SQL)

    # -- claiming ----------------------------------------------------------------------
    def claims_in_one_statement(self, *, fair: bool) -> bool:
        # The fair claim first locks the control rows of limited tenants.
        return not fair

    @contextmanager
    def claim_connection(self, engine: Engine, *, alone: bool) -> Iterator[Connection]:
        """An idle worker's claim in one round trip instead of three.

        psycopg opens a transaction with a ``BEGIN`` of its own round trip,
        and ``COMMIT`` is another. Autocommit is switched on the driver's
        connection (SQLAlchemy's isolation switch costs more than the round
        trips saved) and back before the connection returns to the pool; one
        that cannot be switched back is invalidated. Behind a transaction-mode
        pooler every claim is a transaction of its own (``_claim_transaction``).
        """
        if engine.get_execution_options().get(q.SETTINGS_PER_TRANSACTION):
            with self._claim_transaction(engine) as conn:
                yield conn
            return
        if not alone:
            with engine.begin() as conn:
                yield conn
            return
        with engine.connect() as conn, _autocommitted(conn):
            yield conn

    @staticmethod
    @contextmanager
    def _claim_transaction(engine: Engine) -> Iterator[Connection]:
        """A claim transaction behind a transaction-mode pooler (``SETTINGS_PER_TRANSACTION``).

        The claim settings cannot ride on the connection (the pooler refuses
        startup ``options`` and hands the next transaction another server
        connection), so ``BEGIN`` and the transaction-local settings go in
        one simple-protocol round trip, with psycopg in autocommit so that it
        sends no ``BEGIN`` of its own; ``COMMIT`` (or ``ROLLBACK``) ends it and
        the connection returns to the pool idle, or is invalidated.
        """
        with engine.connect() as conn, _autocommitted(conn) as raw:
            _run_raw(conn, raw, q.CLAIM_BEGIN)
            try:
                yield conn
            except BaseException:
                if not conn.invalidated:
                    with suppress(Exception):  # the claim's own error is the one to see
                        _run_raw(conn, raw, "ROLLBACK")
                raise
            _run_raw(conn, raw, "COMMIT")

    def claim(self, conn: Connection, request: ClaimRequest) -> list[Job]:
        if request.fair:
            return self._claim_fair(conn, request)
        return self._claim_fifo(conn, request)

    def _claim_fifo(self, conn: Connection, request: ClaimRequest) -> list[Job]:
        queues, tenants, worker_id = request.queues, request.tenants, request.worker_id
        token = str(uuid.uuid4())
        params = {
            "queue": queues[0],
            "queues": list(queues),
            "tenants": list(tenants or ()),
            "limit": request.limit,
            "lease": request.lease_seconds,
            "token": token,
            "worker": worker_id,
        }
        sql = q.CLAIM_FIFO[q.variant(queues, tenants)]
        jobs = claimed_jobs(fetch(conn, sql, params), token, worker_id)
        jobs.sort(key=lambda j: (-j.priority, j.scheduled_at, j.id))
        return jobs

    def _claim_fair(self, conn: Connection, request: ClaimRequest) -> list[Job]:
        queues, tenants, held, limit = request.queues, request.tenants, request.held, request.limit
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
        options = conn.get_execution_options()
        if not (options.get(q.GENERIC_PLANS) or options.get(q.SETTINGS_PER_TRANSACTION)):
            conn.exec_driver_sql(q.CLAIM_SET_LOCAL)
        which = q.variant(queues, tenants)
        locked: list[str] = []
        if request.check_limits:
            locked = list(conn.exec_driver_sql(q.LOCK_LIMITED[which], params).scalars())
        params.update(
            after=request.after,
            window=max(FAIR_WINDOW, limit),
            locked=locked,
            limit=limit,
            lease=request.lease_seconds,
            token=str(uuid.uuid4()),
            worker=request.worker_id,
        )
        rows = fetch(conn, q.CLAIM_FAIR[which], params)
        return interleave(claimed_jobs(rows, params["token"], request.worker_id))

    # -- outcomes, fenced on the lease ---------------------------------------------------
    def complete(self, conn: Connection, leases: Sequence[Lease]) -> set[int]:
        if not leases:
            return set()
        return _fenced(conn, q.COMPLETE, leases)

    def extend(self, conn: Connection, leases: Sequence[Lease], lease_seconds: float) -> set[int]:
        """Renew without ever waiting for a row lock (``q.EXTEND``).

        Renewal and completion lock the same rows, each one statement per
        token in its own order (claim order here, finishing order there):
        waiting would let them deadlock. Skipping is enough, since a locked
        row is being written (completed, failed, released or cancelled) right
        now; sorting both by id instead would also need one statement over all
        tokens, and every other multi-row writer in the same order. A skipped
        row counts as still held: renewal must not call a job lost that this
        worker is completing.
        """
        if not leases:
            return set()
        return _fenced(conn, q.EXTEND, leases, {"lease": lease_seconds})

    def release(self, conn: Connection, leases: Sequence[Lease]) -> set[int]:
        if not leases:
            return set()
        return _fenced(conn, q.RELEASE, leases)

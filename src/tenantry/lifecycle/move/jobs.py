"""Copying a paused tenant's unfinished jobs to the target, replacing an earlier attempt's."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql as psql
from sqlalchemy import Connection, delete, insert, select

from tenantry.errors import MoveError
from tenantry.lifecycle.archive.format import JOB_COLUMNS
from tenantry.lifecycle.rowcopy import BATCH, job_for_import
from tenantry.queue.job import PENDING_STATES, JobState
from tenantry.queue.schema import jobs_table
from tenantry.tenancy.models import TENANTRY_SCHEMA

#: A job's lease, which belongs to the source's worker (see rowcopy.job_for_import).
_LEASE_COLUMNS = ("lease_expires_at", "lease_token", "worker_id")


def copy_jobs(src: Connection, dst: Connection, tenant_id: str) -> int:
    """The unfinished jobs, replacing whatever an earlier attempt put at the target."""
    dst.execute(delete(jobs_table).where(jobs_table.c.tenant_id == tenant_id))
    query = (
        select(*(jobs_table.c[c] for c in JOB_COLUMNS))
        .where(
            jobs_table.c.tenant_id == tenant_id,
            jobs_table.c.state.in_([s.value for s in PENDING_STATES]),
        )
        .order_by(jobs_table.c.id)
    )
    count = 0
    batch: list[dict[str, Any]] = []
    for row in src.execute(query, execution_options={"yield_per": BATCH}).mappings():
        batch.append(job_for_import(dict(row), tenant_id))
        count += 1
        if len(batch) >= BATCH:
            dst.execute(insert(jobs_table), batch)
            batch.clear()
    if batch:
        dst.execute(insert(jobs_table), batch)
    return count


def copy_jobs_by_server(src: Connection, dst: Connection, tenant_id: str) -> int:
    """:func:`copy_jobs` between two PostgreSQL databases: one ``COPY`` out into one ``COPY`` in.

    Text format, so the two servers need not have the same binary layout;
    the text forms were pinned by
    :func:`~tenantry.lifecycle.move.hashing.server_hashing`. A running job is
    made available again on the way, as
    :func:`~tenantry.lifecycle.rowcopy.job_for_import` does.
    """
    dst.execute(delete(jobs_table).where(jobs_table.c.tenant_id == tenant_id))
    running = psql.Literal(JobState.RUNNING.value)
    selected: list[psql.Composable] = []
    for name in JOB_COLUMNS:
        column = psql.Identifier(name)
        if name == "state":
            selected.append(
                psql.SQL("CASE WHEN state = {} THEN {} ELSE state END").format(
                    running, psql.Literal(JobState.AVAILABLE.value)
                )
            )
        elif name in _LEASE_COLUMNS:
            selected.append(
                psql.SQL("CASE WHEN state = {} THEN NULL ELSE {} END").format(running, column)
            )
        else:
            selected.append(column)
    table = psql.Identifier(TENANTRY_SCHEMA, jobs_table.name)
    out = psql.SQL(
        "COPY (SELECT {} FROM {} WHERE tenant_id = {} AND state IN ({}) ORDER BY id) TO STDOUT"
    ).format(
        psql.SQL(", ").join(selected),
        table,
        psql.Literal(tenant_id),
        psql.SQL(", ").join(psql.Literal(s.value) for s in PENDING_STATES),
    )
    into = psql.SQL("COPY {} ({}) FROM STDIN").format(
        table, psql.SQL(", ").join(psql.Identifier(c) for c in JOB_COLUMNS)
    )
    source, target = _driver(src), _driver(dst)
    with source.cursor() as reading, target.cursor() as writing:
        with reading.copy(out) as copy_out, writing.copy(into) as copy_in:
            for block in copy_out:
                copy_in.write(block)
        return writing.rowcount


def _driver(conn: Connection) -> psycopg.Connection[Any]:
    driver = conn.connection.driver_connection
    if not isinstance(driver, psycopg.Connection):
        raise MoveError(f"expected a psycopg connection, not {type(driver).__name__}")
    return driver

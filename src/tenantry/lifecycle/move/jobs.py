"""Copying a paused tenant's unfinished jobs to the target, ids kept.

A client that enqueued a job holds its id, and asks about it later: after a
move, that id must still name the same job, or no job of the tenant, never
another job of the tenant. So the jobs keep their ids, and before anything is
inserted the target's id counter is moved past every id the source's jobs
table ever gave out (the copied jobs, the finished ones left behind and the
pruned ones): a job enqueued after the move gets an id no job of the tenant
had before.

A tenant with a database of its own has its jobs table to itself. Shared and
schema-mode tenants of a store share the store's jobs table, where another
tenant's job may hold a copied job's id; only such a job gets a new id (from
the moved counter, so also one the tenant never had), and the move reports
the old and the new id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, func, insert, select, text

from tenantry.errors import MoveError
from tenantry.lifecycle.archive.format import JOB_COLUMNS
from tenantry.lifecycle.rowcopy import BATCH, job_for_import
from tenantry.queue.job import PENDING_STATES, JobState
from tenantry.queue.schema import jobs_table
from tenantry.tenancy.logs import get_logger
from tenantry.tenancy.models import TENANTRY_SCHEMA

if TYPE_CHECKING:
    import psycopg

log = get_logger(__name__)

#: A job's lease, which belongs to the source's worker (see rowcopy.job_for_import).
_LEASE_COLUMNS = ("lease_expires_at", "lease_token", "worker_id")
#: What is copied of a job: everything, its id included.
_COPIED = ("id", *JOB_COLUMNS)
#: The jobs table as PostgreSQL names it (its schema is never translated).
_PG_TABLE = f"{TENANTRY_SCHEMA}.{jobs_table.name}"
#: The target's staging table of a server-side copy (dropped at commit).
_STAGING = "tenantry_moving_jobs"


@dataclass(frozen=True)
class CopiedJobs:
    """What copying a tenant's unfinished jobs did."""

    count: int
    #: Old id to new id of the jobs whose id another tenant's job holds in the
    #: target's jobs table; every other job kept its id.
    renumbered: dict[int, int] = field(default_factory=dict)


def highest_id(conn: Connection) -> int:
    """The highest id this database's jobs table has given out (0: none).

    The id counter's position, not only the highest id there now: the jobs
    with the highest ids may have been pruned.
    """
    highest = int(conn.execute(select(func.coalesce(func.max(jobs_table.c.id), 0))).scalar_one())
    if conn.dialect.name == "postgresql":
        counter = conn.execute(
            text("SELECT pg_sequence_last_value(pg_get_serial_sequence(:t, 'id')::regclass)"),
            {"t": _PG_TABLE},
        ).scalar()
    elif _sqlite_counts(conn):
        counter = conn.execute(
            text("SELECT seq FROM sqlite_sequence WHERE name = :t"), {"t": jobs_table.name}
        ).scalar()
    else:
        counter = None
    return max(highest, int(counter or 0))


def advance_ids(conn: Connection, past: int) -> None:
    """Make the jobs table give out only ids above *past* from now on (never lowers it).

    PostgreSQL: ``setval`` on the id sequence, only when it is below *past*
    (in a shared jobs table other tenants' enqueues go on meanwhile: a
    counter already past *past* is left alone).
    SQLite: the table's ``sqlite_sequence`` row (``AUTOINCREMENT``). A SQLite
    jobs table made before tenantry declared ``AUTOINCREMENT`` numbers new
    rows after the highest id present, and cannot be told otherwise.
    """
    if past <= 0:
        return
    if conn.dialect.name == "postgresql":
        conn.execute(
            text(
                "SELECT setval(s.seq, :v) FROM (SELECT pg_get_serial_sequence(:t, 'id') AS seq) s "
                "WHERE coalesce(pg_sequence_last_value(s.seq::regclass), 0) < :v"
            ),
            {"t": _PG_TABLE, "v": past},
        )
        return
    if not _sqlite_counts(conn):
        log.warning(
            "the SQLite jobs table predates AUTOINCREMENT: ids above the highest one present "
            "may be given again to new jobs"
        )
        return
    moved = conn.execute(
        text("UPDATE sqlite_sequence SET seq = :v WHERE name = :t AND seq < :v"),
        {"t": jobs_table.name, "v": past},
    ).rowcount
    if not moved:
        conn.execute(
            text(
                "INSERT INTO sqlite_sequence (name, seq) SELECT :t, :v "
                "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = :t)"
            ),
            {"t": jobs_table.name, "v": past},
        )


def _sqlite_counts(conn: Connection) -> bool:
    """Whether this SQLite jobs table keeps its counter in ``sqlite_sequence``."""
    ddl = conn.execute(
        text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :t"),
        {"t": jobs_table.name},
    ).scalar()
    return ddl is not None and "AUTOINCREMENT" in str(ddl).upper()


def copy_jobs(src: Connection, dst: Connection, tenant_id: str) -> CopiedJobs:
    """The unfinished jobs, ids kept, replacing whatever an earlier attempt put at the target."""
    dst.execute(delete(jobs_table).where(jobs_table.c.tenant_id == tenant_id))
    advance_ids(dst, highest_id(src))
    query = (
        select(*(jobs_table.c[c] for c in _COPIED))
        .where(
            jobs_table.c.tenant_id == tenant_id,
            jobs_table.c.state.in_([s.value for s in PENDING_STATES]),
        )
        .order_by(jobs_table.c.id)
    )
    count = 0
    renumbered: dict[int, int] = {}
    batch: list[dict[str, Any]] = []
    for row in src.execute(query, execution_options={"yield_per": BATCH}).mappings():
        batch.append(job_for_import(dict(row), tenant_id))
        count += 1
        if len(batch) >= BATCH:
            _insert_keeping_ids(dst, batch, renumbered)
            batch = []
    if batch:
        _insert_keeping_ids(dst, batch, renumbered)
    _report(tenant_id, renumbered)
    return CopiedJobs(count, renumbered)


def _insert_keeping_ids(
    dst: Connection, batch: list[dict[str, Any]], renumbered: dict[int, int]
) -> None:
    """Insert jobs with their ids; one whose id another tenant's job holds gets a new one."""
    ids = [row["id"] for row in batch]
    taken = set(dst.execute(select(jobs_table.c.id).where(jobs_table.c.id.in_(ids))).scalars())
    kept = [row for row in batch if row["id"] not in taken]
    if kept:
        dst.execute(insert(jobs_table), kept)
    clashing = [row for row in batch if row["id"] in taken]
    if clashing:
        old = [row.pop("id") for row in clashing]
        stmt = insert(jobs_table).returning(jobs_table.c.id, sort_by_parameter_order=True)
        new = dst.execute(stmt, clashing).scalars().all()
        renumbered.update(zip(old, new, strict=True))


def _report(tenant_id: str, renumbered: dict[int, int]) -> None:
    if renumbered:
        log.warning(
            "tenant %s: %d job id(s) were taken by other tenants' jobs in the target's jobs "
            "table; those jobs got new ids (old -> new: %s)",
            tenant_id,
            len(renumbered),
            ", ".join(f"{old} -> {new}" for old, new in sorted(renumbered.items())[:20]),
        )


def copy_jobs_by_server(src: Connection, dst: Connection, tenant_id: str) -> CopiedJobs:
    """:func:`copy_jobs` between two PostgreSQL databases: one ``COPY`` out into one ``COPY`` in.

    Text format, so the two servers need not have the same binary layout;
    the text forms were pinned by
    :func:`~tenantry.lifecycle.move.hashing.server_hashing`. A running job is
    made available again on the way, as
    :func:`~tenantry.lifecycle.rowcopy.job_for_import` does. The rows land in
    a temporary table first, where the ids another tenant's job holds are
    replaced, and go into the jobs table from there.
    """
    from psycopg import sql as psql  # the 'postgres' extra; both ends are PostgreSQL here

    dst.execute(delete(jobs_table).where(jobs_table.c.tenant_id == tenant_id))
    advance_ids(dst, highest_id(src))
    running = psql.Literal(JobState.RUNNING.value)
    selected: list[psql.Composable] = []
    for name in _COPIED:
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
    columns = ", ".join(f'"{c}"' for c in _COPIED)
    dst.execute(text(f"CREATE TEMP TABLE {_STAGING} (LIKE {_PG_TABLE}) ON COMMIT DROP"))
    into = psql.SQL("COPY {} ({}) FROM STDIN").format(psql.Identifier(_STAGING), psql.SQL(columns))
    source, target = _driver(src), _driver(dst)
    with (
        source.cursor() as reading,
        target.cursor() as writing,
        reading.copy(out) as copy_out,
        writing.copy(into) as copy_in,
    ):
        for block in copy_out:
            copy_in.write(block)
    clashes = dst.execute(
        text(
            f"WITH clash AS (SELECT m.id AS old_id, nextval(pg_get_serial_sequence(:t, 'id')) "
            f"AS new_id FROM {_STAGING} m WHERE EXISTS "
            f"(SELECT 1 FROM {_PG_TABLE} j WHERE j.id = m.id)), "
            f"moved AS (UPDATE {_STAGING} m SET id = c.new_id FROM clash c WHERE m.id = c.old_id) "
            "SELECT old_id, new_id FROM clash"
        ),
        {"t": _PG_TABLE},
    ).all()
    renumbered = {int(old): int(new) for old, new in clashes}
    count = dst.execute(
        text(f"INSERT INTO {_PG_TABLE} ({columns}) SELECT {columns} FROM {_STAGING}")
    ).rowcount
    dst.execute(text(f"DROP TABLE {_STAGING}"))
    _report(tenant_id, renumbered)
    return CopiedJobs(count, renumbered)


def _driver(conn: Connection) -> psycopg.Connection[Any]:
    import psycopg

    driver = conn.connection.driver_connection
    if not isinstance(driver, psycopg.Connection):
        raise MoveError(f"expected a psycopg connection, not {type(driver).__name__}")
    return driver

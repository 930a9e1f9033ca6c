"""Export one tenant to a portable file (:mod:`tenantry.lifecycle.archive.format`).

An export is one snapshot: every table and the jobs are read in one read-only
transaction (``REPEATABLE READ`` on PostgreSQL; one read transaction on SQLite,
which in WAL mode sees the database as of its first read). Writes that
commit meanwhile are either wholly in the file or not at all.
"""

from __future__ import annotations

import os
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Table, func, select

from tenantry.errors import TenantStateError
from tenantry.lifecycle.archive.format import (
    JOB_COLUMNS,
    JOBS_FILE,
    Manifest,
    TableEntry,
    write_manifest,
    write_rows,
)
from tenantry.lifecycle.rowcopy import BATCH, tenant_engine, tenant_filter
from tenantry.queue.job import PENDING_STATES
from tenantry.queue.schema import jobs_table
from tenantry.tenancy.catalog import Tenant, TenantStatus
from tenantry.tenancy.facade import Tenancy
from tenantry.tenancy.ids import validate_tenant_id
from tenantry.tenancy.isolation import strategy_for
from tenantry.tenancy.logs import get_logger

log = get_logger(__name__)

#: ``progress(phase, done, total)``: how a long operation (export, import, backup,
#: move) says how far it got, so that a front end can show it. *phase* names what
#: is being done (``"export notes"``, ``"load notes"``, ``"move"``), *done* counts
#: its units (rows, or a move's steps) and *total* is how many there will be, or
#: ``None`` when that is not known. It is called from the working thread, at each
#: table and every :data:`~tenantry.lifecycle.rowcopy.BATCH` rows, never per row.
Progress = Callable[[str, int, int | None], None]

_T = TypeVar("_T")


def reported_rows(
    rows: Iterable[_T], progress: Progress, phase: str, total: int | None
) -> Iterator[_T]:
    """*rows* unchanged, reporting every :data:`BATCH` of them and the end to *progress*.

    A batch is reported when the consumer asks for the row after it, that is
    once it has dealt with the batch (a loader has inserted it), not when the
    batch was merely read; the end, when the consumer finds no more rows.
    """
    done = 0
    last: tuple[int, int | None] = (0, total)
    progress(phase, *last)
    for row in rows:
        yield row
        done += 1
        if done % BATCH == 0:
            last = (done, total)
            progress(phase, *last)
    final = (done, done if total is None else max(total, done))
    if final != last:
        progress(phase, *final)


_EXPORTABLE = (
    TenantStatus.ACTIVE,
    TenantStatus.SUSPENDED,
    TenantStatus.MIGRATING,
    TenantStatus.MOVING,
)


def export_tenant(
    tenantry: Tenancy, tenant_id: str, path: str | Path, *, progress: Progress | None = None
) -> Manifest:
    """Write *tenant_id*'s rows and unfinished jobs to *path* (replaced atomically).

    With *progress*, each table is reported as ``export <table>`` (its rows
    counted first, in the same snapshot, so the total is exact) and the jobs
    as ``export jobs``; without it nothing is counted.
    """
    tenant = tenantry.get_tenant(validate_tenant_id(tenant_id))
    if tenant.status not in _EXPORTABLE:
        raise TenantStateError(f"tenant {tenant.id!r} is {tenant.status.value}; cannot export it")
    store = tenantry.store(tenant.store)
    history = tenantry.tenant_history
    target = Path(path)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    engine, dispose = tenant_engine(store, tenant)
    if store.is_postgres:
        engine = engine.execution_options(
            isolation_level="REPEATABLE READ", postgresql_readonly=True
        )
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            with engine.begin() as conn:
                revision = None
                if history is not None:
                    schema = strategy_for(tenant.isolation).data_schema(tenant.id)
                    revision = history.current(conn, schema)
                entries = [
                    _export_table(zf, conn, table, tenant, i, progress)
                    for i, table in enumerate(tenantry.tenant_metadata.sorted_tables)
                ]
                jobs = _export_jobs(zf, conn, tenant, progress)
            manifest = Manifest(
                tenant={k: v for k, v in tenant.to_dict().items() if k != "status"},
                revision=revision,
                dialect=store.dialect,
                tables=entries,
                jobs=jobs,
                created_at=datetime.now(UTC).isoformat(),
            )
            write_manifest(zf, manifest)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
        if dispose:
            engine.dispose()
    log.info(
        "exported tenant %s: %d table(s), %d row(s), %d job(s) to %s",
        tenant.id,
        len(entries),
        sum(e.rows for e in entries),
        jobs.rows,
        target,
    )
    return manifest


def _export_table(
    zf: zipfile.ZipFile,
    conn: Connection,
    table: Table,
    tenant: Tenant,
    index: int,
    progress: Progress | None,
) -> TableEntry:
    columns = [c.name for c in table.columns]
    pk = list(table.primary_key.columns) or list(table.columns)
    where = tenant_filter(table, tenant)
    query = select(table).where(where).order_by(*pk)
    total = _count(conn, table, where) if progress is not None else None
    rows: Iterator[Any] = iter(conn.execution_options(yield_per=BATCH).execute(query))
    if progress is not None:
        rows = reported_rows(rows, progress, f"export {table.name}", total)
    name = f"data/{index:03d}_{table.name}.jsonl"
    count, digest = write_rows(zf, name, rows)
    return TableEntry(table.name, name, columns, count, digest)


def _export_jobs(
    zf: zipfile.ZipFile, conn: Connection, tenant: Tenant, progress: Progress | None
) -> TableEntry:
    where = (
        jobs_table.c.tenant_id == tenant.id,
        jobs_table.c.state.in_([s.value for s in PENDING_STATES]),
    )
    query = select(*(jobs_table.c[c] for c in JOB_COLUMNS)).where(*where).order_by(jobs_table.c.id)
    total = _count(conn, jobs_table, *where) if progress is not None else None
    rows: Iterator[Any] = iter(conn.execution_options(yield_per=BATCH).execute(query))
    if progress is not None:
        rows = reported_rows(rows, progress, "export jobs", total)
    count, digest = write_rows(zf, JOBS_FILE, rows)
    return TableEntry("tenantry_jobs", JOBS_FILE, list(JOB_COLUMNS), count, digest)


def _count(conn: Connection, table: Table, *where: Any) -> int:
    """Rows the export is about to read (same transaction, so the same snapshot)."""
    return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())

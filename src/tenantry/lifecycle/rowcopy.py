"""Copying a tenant's rows into a placement: shared by import and by a move.

Where the rows go (an admin engine reaching the tenant's tables), loading
them in one transaction, renumbering surrogate keys where other tenants own
the numbers, moving sequences past the kept ones, and making an unfinished
job fit to run elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, Integer, Table, func, insert, select, text

from tenantry.errors import ExportError
from tenantry.lifecycle.archive.format import ExportFile, TableEntry
from tenantry.queue.job import JobState
from tenantry.queue.schema import jobs_table
from tenantry.tenancy.catalog import Tenant
from tenantry.tenancy.facade import Tenancy
from tenantry.tenancy.isolation import postgres as pg
from tenantry.tenancy.isolation import strategy_for
from tenantry.tenancy.models import TENANT_ID_COLUMN, TENANT_SCHEMA
from tenantry.tenancy.store import Store

#: Rows per statement and per fetch.
BATCH = 1000

#: Per table, exported key to new key, of the tables whose keys were renumbered.
KeyMaps = dict[str, dict[Any, Any]]


def tenant_engine(store: Store, tenant: Tenant) -> tuple[Engine, bool]:
    """An admin engine whose connections reach the tenant's tables and jobs (True: dispose)."""
    strategy = strategy_for(tenant.isolation)
    return strategy.admin_engine(store, tenant.id), strategy.own_database


def tenant_filter(table: Table, tenant: Tenant) -> Any:
    # Rows of other tenants share the tables only in shared mode, but the
    # filter is right everywhere: every tenant table carries tenant_id.
    return table.c[TENANT_ID_COLUMN] == tenant.id


def load_rows(
    tenantry: Tenancy,
    export: ExportFile,
    tenant: Tenant,
    tables: list[Table],
    *,
    with_jobs: bool = True,
    on_loaded: Callable[[Connection, KeyMaps], None] | None = None,
) -> tuple[dict[str, int], int]:
    """Insert the file's rows (and jobs) into *tenant*'s placement, in one transaction.

    *on_loaded* is called inside that transaction with the renumbered keys
    (per table: exported key to new key), so that a caller can keep them
    atomically with the rows (a move needs them to find the rows again).
    """
    store = tenantry.store(tenant.store)
    engine, dispose = tenant_engine(store, tenant)
    if not store.is_postgres:
        engine = engine.execution_options(sqlite_begin="BEGIN IMMEDIATE")
    entries = {e.name: e for e in export.manifest.tables}
    renumber = strategy_for(tenant.isolation).shares_tables
    counts: dict[str, int] = {}
    try:
        with engine.begin() as conn:
            new_ids: KeyMaps = {}
            for table in tables:
                counts[table.name] = _load_table(
                    conn, export, entries[table.name], table, tenant.id, renumber, new_ids
                )
            jobs = _load_jobs(conn, export, tenant.id) if with_jobs else 0
            if on_loaded is not None:
                on_loaded(conn, new_ids)
    finally:
        if dispose:
            engine.dispose()
    return counts, jobs


def renumbered_key(table: Table) -> str | None:
    """The single integer surrogate key a shared table numbers for all tenants, if any."""
    pk = list(table.primary_key.columns)
    if len(pk) == 1 and isinstance(pk[0].type, Integer) and table.autoincrement_column is pk[0]:
        return pk[0].name
    return None


def _load_table(
    conn: Connection,
    export: ExportFile,
    entry: TableEntry,
    table: Table,
    tenant_id: str,
    renumber: bool,
    new_ids: KeyMaps,
) -> int:
    """Insert one table's rows; in shared tables, surrogate keys are renumbered.

    Shared tables hold every tenant's rows under one key sequence, so the
    exported ids may be taken: rows get new ids, and foreign keys to tables
    renumbered before are rewritten. Elsewhere the tenant has the tables to
    itself and ids are kept (sequences are moved past them).
    """
    key = renumbered_key(table) if renumber else None
    refs = [
        (fk.parent.name, fk.column.table.name)
        for fk in table.foreign_keys
        if fk.column.table.name in new_ids and fk.column.primary_key
    ]
    if key is not None and any(fk.column.table is table for fk in table.foreign_keys):
        raise ExportError(
            f"table {table.name!r} refers to itself; importing it into shared tables "
            "(which renumbers its keys) is not supported: import into schema or database mode"
        )
    mapping: dict[Any, Any] = {}
    count = 0
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        if not batch:
            return
        if key is None:
            conn.execute(insert(table), batch)
        else:
            old = [row.pop(key) for row in batch]
            stmt = insert(table).returning(table.c[key], sort_by_parameter_order=True)
            fresh = conn.execute(stmt, batch).scalars().all()
            mapping.update(zip(old, fresh, strict=True))
        batch.clear()

    for row in export.rows(entry):
        row[TENANT_ID_COLUMN] = tenant_id
        for column, referred in refs:
            if row[column] is not None:
                row[column] = new_ids[referred][row[column]]
        batch.append(row)
        count += 1
        if len(batch) >= BATCH:
            flush()
    flush()
    if key is not None:
        new_ids[table.name] = mapping
    elif conn.dialect.name == "postgresql":
        move_sequences(conn, table)
    return count


def move_sequences(conn: Connection, table: Table) -> None:
    """Let the next default id follow the imported ones (PostgreSQL sequences)."""
    column = table.autoincrement_column
    if column is None:
        return
    schema = conn.get_execution_options().get("schema_translate_map", {}).get(TENANT_SCHEMA)
    name = (
        f"{pg.quote(conn, schema)}.{pg.quote(conn, table.name)}"
        if schema
        else pg.quote(conn, table.name)
    )
    highest = conn.execute(select(func.max(table.c[column.name]))).scalar()
    if highest is None:
        return
    conn.execute(
        text("SELECT setval(pg_get_serial_sequence(:t, :c), :v)"),
        {"t": name, "c": column.name, "v": highest},
    )


def job_for_import(row: dict[str, Any], tenant_id: str) -> dict[str, Any]:
    """An unfinished job as it is inserted elsewhere (changes and returns *row*)."""
    row["tenant_id"] = tenant_id
    if row["state"] == JobState.RUNNING.value:
        row.update(
            state=JobState.AVAILABLE.value,
            lease_expires_at=None,
            lease_token=None,
            worker_id=None,
        )
    return row


def _load_jobs(conn: Connection, export: ExportFile, tenant_id: str) -> int:
    """Unfinished jobs come back in their states; a running one is available again.

    Its worker belongs to the source; the attempt it started stays counted
    (as when a crashed worker's job is rescued), so a poison job still dies.
    """
    count = 0
    batch: list[dict[str, Any]] = []
    for row in export.rows(export.manifest.jobs):
        batch.append(job_for_import(row, tenant_id))
        count += 1
        if len(batch) >= BATCH:
            conn.execute(insert(jobs_table), batch)
            batch.clear()
    if batch:
        conn.execute(insert(jobs_table), batch)
    return count

"""The two copies of a moving tenant: reaching them, making the target, removing either.

Also the revision checks: a copy is made from the models (head), so both
copies must be at head, and nothing may migrate one and not the other.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Connection, Engine, Table, func, select

from tenantry.errors import MoveError
from tenantry.lifecycle.archive.format import check_compatible
from tenantry.lifecycle.export import Progress, export_tenant
from tenantry.lifecycle.import_ import ProgressExportFile
from tenantry.lifecycle.move.keys import ensure_keys_table, forget_keys, save_keys
from tenantry.lifecycle.move.state import Move
from tenantry.lifecycle.rowcopy import KeyMaps, load_rows, tenant_engine
from tenantry.queue import control
from tenantry.queue.sources import source_of
from tenantry.tenancy.catalog import Tenant
from tenantry.tenancy.facade import Tenancy
from tenantry.tenancy.isolation import strategy_for
from tenantry.tenancy.models import TENANT_ID_COLUMN


def engines(
    tenantry: Tenancy, move: Move, tenant: Tenant
) -> tuple[Engine, Engine, Callable[[], None]]:
    """Source (read-only snapshot) and target (write-locked on SQLite) engines, and a disposer."""
    source_store = tenantry.store(move.from_store)
    target_store = tenantry.store(move.to_store)
    source, dispose_source = tenant_engine(source_store, move.source(tenant))
    target, dispose_target = tenant_engine(target_store, move.target(tenant))
    if source_store.is_postgres:
        source = source.execution_options(
            isolation_level="REPEATABLE READ", postgresql_readonly=True
        )
    if not target_store.is_postgres:
        target = target.execution_options(sqlite_begin="BEGIN IMMEDIATE")

    def dispose() -> None:
        if dispose_source:
            source.dispose()
        if dispose_target:
            target.dispose()

    return source, target, dispose


def remove_copy(
    tenantry: Tenancy, placement: Tenant, *, keep_jobs: bool, keep_control: bool
) -> None:
    """Remove one copy of the tenant's data (idempotent).

    When the other copy keeps its jobs in the same table (*keep_jobs*), only
    the tables are removed, so the jobs that stayed put are not lost.
    """
    store = tenantry.store(placement.store)
    metadata = tenantry.tenant_metadata
    strategy = strategy_for(placement.isolation)
    if strategy.own_database:
        strategy.deprovision(store, placement.id, metadata)
        return
    if keep_jobs:
        strategy.drop_tables(store, placement.id, metadata)
    else:
        strategy.deprovision(store, placement.id, metadata)
    if not keep_control:
        with source_of(placement, store).engine().begin() as conn:
            control.remove(conn, placement.id)


def remove_target(tenantry: Tenancy, move: Move, tenant: Tenant) -> None:
    """The target's copy and the move's renumbered keys, gone (idempotent)."""
    shared = move.shares_jobs
    remove_copy(tenantry, move.target(tenant), keep_jobs=shared, keep_control=shared)
    forget_keys(tenantry, move)


def remove_source(tenantry: Tenancy, move: Move, tenant: Tenant) -> None:
    """The old copy gone, once the catalog points at the new one (idempotent)."""
    shared = move.shares_jobs
    remove_copy(tenantry, move.source(tenant), keep_jobs=shared, keep_control=shared)
    forget_keys(tenantry, move)


def provision_target(tenantry: Tenancy, move: Move) -> None:
    strategy_for(move.to_isolation).provision(
        tenantry.store(move.to_store),
        move.tenant_id,
        tenantry.tenant_metadata,
        history=tenantry.tenant_history,
    )


def bulk_copy(
    tenantry: Tenancy, move: Move, tenant: Tenant, *, progress: Progress | None = None
) -> int:
    """Copy one snapshot of the tenant's tables to a fresh target; returns rows copied.

    The tenant is served meanwhile: what changes after the snapshot is the
    delta, copied in the pause. Jobs are left for the pause too (they keep
    running here until then). *progress* hears of each table as it is
    exported and as it is loaded.
    """
    remove_target(tenantry, move, tenant)
    provision_target(tenantry, move)

    def keep_keys(conn: Connection, keys: KeyMaps) -> None:
        if move.renumbers:
            ensure_keys_table(conn)
            for table, mapping in keys.items():
                save_keys(conn, tenant.id, table, mapping)

    workdir = Path(tempfile.mkdtemp(prefix=f"tenantry-move-{tenant.id}-"))
    try:
        file = workdir / f"{tenant.id}.tenant"
        export_tenant(tenantry, tenant.id, file, progress=progress)
        with ProgressExportFile(file, progress) as export:
            head = tenantry.tenant_history.head if tenantry.tenant_history else None
            tables = check_compatible(export, tenantry.tenant_metadata, head)
            rows, _ = load_rows(
                tenantry, export, move.target(tenant), tables, with_jobs=False, on_loaded=keep_keys
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return sum(rows.values())


def count_rows(tenantry: Tenancy, tenant: Tenant, tables: list[Table]) -> dict[str, int]:
    engine, dispose = tenant_engine(tenantry.store(tenant.store), tenant)
    try:
        with engine.begin() as conn:
            return {
                t.name: conn.execute(
                    select(func.count()).where(t.c[TENANT_ID_COLUMN] == tenant.id)
                ).scalar_one()
                for t in tables
            }
    finally:
        if dispose:
            engine.dispose()


def _revision(tenantry: Tenancy, placement: Tenant) -> str | None:
    history = tenantry.tenant_history
    if history is None:
        return None
    engine, dispose = tenant_engine(tenantry.store(placement.store), placement)
    try:
        with engine.connect() as conn:
            schema = strategy_for(placement.isolation).data_schema(placement.id)
            return history.current(conn, schema)
    finally:
        if dispose:
            engine.dispose()


def check_at_head(tenantry: Tenancy, tenant: Tenant) -> None:
    """The copy is made from the models (head): the original must be at head too."""
    history = tenantry.tenant_history
    if history is None:
        return
    current = _revision(tenantry, tenant)
    if current != history.head:
        raise MoveError(
            f"tenant {tenant.id!r} is at revision {current or '(none)'}, not at head "
            f"{history.head}; run `tenantry migrate --tenant {tenant.id}` first (or "
            f"`tenantry migrate stamp --tenant {tenant.id}` if its tables predate the history)"
        )


def check_same_revision(tenantry: Tenancy, move: Move, tenant: Tenant, *, paused: bool) -> None:
    """Nothing migrated one copy and not the other while the tenant was served."""
    if tenantry.tenant_history is None:
        return
    old = _revision(tenantry, move.source(tenant))
    new = _revision(tenantry, move.target(tenant))
    if old != new or old != tenantry.tenant_history.head:
        raise MoveError(
            f"tenant {tenant.id!r} is at revision {old or '(none)'} and its copy at "
            f"{new or '(none)'} (head: {tenantry.tenant_history.head}); it was migrated during "
            + (
                "the move. Abort the move (it stays where it was) and move it again."
                if paused
                else "the bulk copy. Run the move again: the bulk copy starts over."
            )
        )

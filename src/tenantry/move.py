"""Moving a tenant to another store or isolation mode, resumable after a crash.

A move is export/import with a pause around it and a catalog switch in the
middle. Its progress is persisted in ``tenantry_moves`` beside the catalog,
and the catalog row points at exactly one copy at every moment:

1. **pause**: the tenant becomes ``moving`` (sessions refuse with the
   retryable :class:`~tenantry.errors.TenantMovingError`, the queue stops
   starting its jobs) and the move row is written, in one transaction.
   Then the move waits for other processes' catalog caches to expire and for
   the tenant's running jobs to finish: the pause window starts here.
2. **copy**: whatever an earlier attempt left at the target is removed; the
   target storage is provisioned; the tenant is exported (one snapshot) and
   loaded into the target in one transaction.
3. **verify**: per table, the row count and a digest of the rows (in an
   order- and key-independent form) must be equal on both sides, and so
   must the unfinished jobs.
4. **switch**: the tenant's store and mode, and the move's step, change in
   one catalog transaction. From here the target copy is the tenant.
5. **clean up**: the old copy is removed; the tenant gets its status from
   before the move back, and the move row is deleted (one transaction).

A crash before the switch leaves the catalog on the old copy, which was only
read: running the move again (or with ``abort=True``) discards the target's
partial copy and starts over (or back). A crash after the switch leaves the
catalog on the new copy: running the move again finishes the clean-up.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Table, delete, func, insert, select, update

from tenantry.catalog import IsolationMode, Tenant, TenantStatus, moves_table, tenants_table
from tenantry.errors import MoveError, TenantStateError
from tenantry.ids import validate_tenant_id
from tenantry.isolation import postgres as pg
from tenantry.isolation import schema_name, strategy_for
from tenantry.logs import get_logger
from tenantry.models import TENANT_ID_COLUMN, is_tenant_table
from tenantry.queue import control
from tenantry.queue.job import PENDING_STATES, JobState
from tenantry.queue.schema import jobs_table
from tenantry.queue.sources import source_of
from tenantry.transfer import (
    ExportFile,
    act_as,
    check_compatible,
    encode_line,
    export_tenant,
    load_rows,
    renumbered_key,
    tenant_engine,
)

if TYPE_CHECKING:
    from tenantry.core import Tenantry

log = get_logger(__name__)

_MOVABLE = (TenantStatus.ACTIVE, TenantStatus.SUSPENDED)
#: Compared between the copies: what a job is, not who is running it.
_JOB_COLUMNS = ("queue", "kind", "payload", "priority", "max_attempts", "idempotency_key")


class MoveStep(StrEnum):
    COPYING = "copying"  # the catalog points at the old copy
    SWITCHED = "switched"  # the catalog points at the new copy; the old one is removed next


@dataclass(frozen=True)
class Move:
    tenant_id: str
    from_store: str
    from_isolation: IsolationMode
    to_store: str
    to_isolation: IsolationMode
    prior_status: TenantStatus
    step: MoveStep


@dataclass(frozen=True)
class MoveResult:
    tenant: Tenant
    rows: dict[str, int]
    jobs: int
    #: From the pause to the end (sessions refused, jobs waiting), in this run.
    pause_seconds: float
    resumed: bool
    aborted: bool = False


def _placement(tenant: Tenant, store: str, mode: IsolationMode) -> Tenant:
    return replace(tenant, store=store, isolation=mode)


def _shares_jobs(move: Move) -> bool:
    """Both copies keep jobs in the same table: the store's, for shared and schema tenants."""
    return move.from_store == move.to_store and IsolationMode.DATABASE not in (
        move.from_isolation,
        move.to_isolation,
    )


# -- the persisted move -------------------------------------------------------------------
def read_move(tenantry: Tenantry, tenant_id: str) -> Move | None:
    tenantry.catalog.ensure_schema()
    with tenantry.catalog.engine.connect() as conn:
        row = (
            conn.execute(select(moves_table).where(moves_table.c.tenant_id == tenant_id))
            .mappings()
            .first()
        )
    if row is None:
        return None
    return Move(
        tenant_id=row["tenant_id"],
        from_store=row["from_store"],
        from_isolation=IsolationMode(row["from_isolation"]),
        to_store=row["to_store"],
        to_isolation=IsolationMode(row["to_isolation"]),
        prior_status=TenantStatus(row["prior_status"]),
        step=MoveStep(row["step"]),
    )


def _begin(tenantry: Tenantry, tenant: Tenant, to_store: str, mode: IsolationMode) -> Move:
    """Pause the tenant and record the move, in one catalog transaction."""
    now = datetime.now(UTC)
    move = Move(
        tenant.id, tenant.store, tenant.isolation, to_store, mode, tenant.status, MoveStep.COPYING
    )
    with tenantry.catalog.engine.begin() as conn:
        changed = conn.execute(
            update(tenants_table)
            .where(tenants_table.c.id == tenant.id, tenants_table.c.status == tenant.status.value)
            .values(status=TenantStatus.MOVING.value, updated_at=now)
        ).rowcount
        if changed != 1:
            raise TenantStateError(f"tenant {tenant.id!r} changed while the move started; retry")
        conn.execute(
            insert(moves_table).values(
                tenant_id=tenant.id,
                from_store=move.from_store,
                from_isolation=move.from_isolation.value,
                to_store=move.to_store,
                to_isolation=move.to_isolation.value,
                prior_status=move.prior_status.value,
                step=move.step.value,
                started_at=now,
                updated_at=now,
            )
        )
    tenantry.catalog.invalidate(tenant.id)
    return move


# -- the steps ------------------------------------------------------------------------------
def _drain(tenantry: Tenantry, tenant: Tenant, timeout: float) -> None:
    """Let the pause take hold everywhere before the snapshot is taken.

    Other processes serve from their catalog cache for up to its TTL, and a
    job claimed before the pause runs to its end: its result must be in the
    copy, not lost with the old one.
    """
    deadline = time.monotonic() + max(timeout, tenantry.config.catalog_cache_ttl)
    time.sleep(tenantry.config.catalog_cache_ttl)
    source = source_of(tenant, tenantry.store(tenant.store))
    while True:
        with source.engine(write=False).connect() as conn:
            running = conn.execute(
                select(func.count()).where(
                    jobs_table.c.tenant_id == tenant.id,
                    jobs_table.c.state == JobState.RUNNING.value,
                )
            ).scalar_one()
        if not running:
            return
        if time.monotonic() > deadline:
            raise MoveError(
                f"tenant {tenant.id!r} still has {running} running job(s) after {timeout:.0f} s; "
                "run the move again later (it resumes) or abort it"
            )
        time.sleep(0.2)


def _remove_copy(
    tenantry: Tenantry, placement: Tenant, *, keep_jobs: bool, keep_control: bool
) -> None:
    """Remove one copy of the tenant's data (idempotent).

    When the other copy keeps its jobs in the same table (*keep_jobs*), only
    the tables are removed, so the jobs that stayed put are not lost.
    """
    store = tenantry.store(placement.store)
    metadata = tenantry.tenant_metadata
    strategy = strategy_for(placement.isolation)
    if placement.isolation is IsolationMode.DATABASE:
        strategy.deprovision(store, placement.id, metadata)
        return
    if not keep_jobs:
        strategy.deprovision(store, placement.id, metadata)
    elif placement.isolation is IsolationMode.SCHEMA:
        with store.admin_engine().begin() as conn:
            name = pg.quote(conn, schema_name(placement.id))
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    else:
        with store.admin_engine().begin() as conn:
            act_as(conn, placement.id)
            for table in reversed(metadata.sorted_tables):
                if is_tenant_table(table) and TENANT_ID_COLUMN in table.c:
                    conn.execute(delete(table).where(table.c[TENANT_ID_COLUMN] == placement.id))
    if not keep_control:
        with source_of(placement, store).engine().begin() as conn:
            control.remove(conn, placement.id)


def _copy(
    tenantry: Tenantry, move: Move, tenant: Tenant, workdir: Path
) -> tuple[dict[str, int], int, list[Table]]:
    target = _placement(tenant, move.to_store, move.to_isolation)
    shared_jobs = _shares_jobs(move)
    _remove_copy(tenantry, target, keep_jobs=shared_jobs, keep_control=shared_jobs)
    store = tenantry.store(move.to_store)
    strategy_for(move.to_isolation).provision(
        store, tenant.id, tenantry.tenant_metadata, history=tenantry.tenant_history
    )
    file = workdir / f"{tenant.id}.tenant"
    export_tenant(tenantry, tenant.id, file)
    with ExportFile(file) as export:
        head = tenantry.tenant_history.head if tenantry.tenant_history else None
        tables = check_compatible(export, tenantry.tenant_metadata, head)
        rows, jobs = load_rows(tenantry, export, target, tables, with_jobs=not shared_jobs)
    # The copy's jobs must not start before the switch: a paused control row beside them.
    tenantry._sync_queue_control(target)
    return rows, jobs, tables


def _digests(
    tenantry: Tenantry, placement: Tenant, tables: list[Table], renumbered: bool
) -> dict[str, tuple[int, str]]:
    """Per table: row count and sha256 of the sorted rows; plus the unfinished jobs.

    When the copy in shared tables got new surrogate keys, those keys and the
    foreign keys to them are left out of both sides' digests.
    """
    store = tenantry.store(placement.store)
    engine, dispose = tenant_engine(store, placement)
    found: dict[str, tuple[int, str]] = {}
    renumbered_tables: set[str] = set()
    try:
        with engine.begin() as conn:
            act_as(conn, placement.id)
            for table in tables:
                skip: set[str] = set()
                key = renumbered_key(table) if renumbered else None
                if key is not None:
                    skip.add(key)
                for fk in table.foreign_keys:
                    if fk.column.table.name in renumbered_tables and fk.column.primary_key:
                        skip.add(fk.parent.name)
                if key is not None:
                    renumbered_tables.add(table.name)
                columns = [c for c in table.columns if c.name not in skip]
                query = select(*columns).where(table.c[TENANT_ID_COLUMN] == placement.id)
                found[table.name] = _digest(conn, query)
            query = select(*(jobs_table.c[c] for c in _JOB_COLUMNS)).where(
                jobs_table.c.tenant_id == placement.id,
                jobs_table.c.state.in_([s.value for s in PENDING_STATES]),
            )
            found["(jobs)"] = _digest(conn, query)
    finally:
        if dispose:
            engine.dispose()
    return found


def _digest(conn: Connection, query: Any) -> tuple[int, str]:
    lines = sorted(encode_line([_comparable(v) for v in row]) for row in conn.execute(query))
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line)
    return len(lines), digest.hexdigest()


def _comparable(value: Any) -> Any:
    # SQLite keeps no time zone; tenantry stores UTC everywhere.
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def _verify(tenantry: Tenantry, move: Move, tenant: Tenant, tables: list[Table]) -> None:
    renumbered = move.to_isolation is IsolationMode.SHARED
    old = _digests(
        tenantry, _placement(tenant, move.from_store, move.from_isolation), tables, renumbered
    )
    new = _digests(
        tenantry, _placement(tenant, move.to_store, move.to_isolation), tables, renumbered
    )
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if differ:
        detail = ", ".join(
            f"{k}: {old.get(k, (0, ''))[0]} vs {new.get(k, (0, ''))[0]} rows" for k in differ
        )
        raise MoveError(
            f"tenant {tenant.id!r}: the copy does not match the original ({detail}); "
            "the catalog still points at the original. Run the move again or abort it."
        )


def _switch(tenantry: Tenantry, move: Move) -> Move:
    now = datetime.now(UTC)
    with tenantry.catalog.engine.begin() as conn:
        changed = conn.execute(
            update(tenants_table)
            .where(
                tenants_table.c.id == move.tenant_id,
                tenants_table.c.status == TenantStatus.MOVING.value,
            )
            .values(store=move.to_store, isolation=move.to_isolation.value, updated_at=now)
        ).rowcount
        if changed != 1:
            raise MoveError(f"tenant {move.tenant_id!r} is no longer moving; the move stopped")
        conn.execute(
            update(moves_table)
            .where(moves_table.c.tenant_id == move.tenant_id)
            .values(step=MoveStep.SWITCHED.value, updated_at=now)
        )
    tenantry.catalog.invalidate(move.tenant_id)
    return replace(move, step=MoveStep.SWITCHED)


def _finish(tenantry: Tenantry, move: Move, status: TenantStatus) -> Tenant:
    """The status from before the move back, and the move row gone, in one transaction."""
    now = datetime.now(UTC)
    with tenantry.catalog.engine.begin() as conn:
        conn.execute(
            update(tenants_table)
            .where(tenants_table.c.id == move.tenant_id)
            .values(status=status.value, updated_at=now)
        )
        conn.execute(delete(moves_table).where(moves_table.c.tenant_id == move.tenant_id))
    tenantry.catalog.invalidate(move.tenant_id)
    tenant = tenantry.get_tenant(move.tenant_id)
    tenantry._sync_queue_control(tenant)
    return tenant


def _count_rows(tenantry: Tenantry, tenant: Tenant, tables: list[Table]) -> dict[str, int]:
    return {
        name: n
        for name, (n, _) in _digests(tenantry, tenant, tables, False).items()
        if name != "(jobs)"
    }


# -- the operation ------------------------------------------------------------------------
#: Called with a step's name after it completed (tests stop a move there).
StepHook = Callable[[str], None]


def move_tenant(
    tenantry: Tenantry,
    tenant_id: str,
    *,
    to_store: str | None = None,
    isolation: IsolationMode | str | None = None,
    abort: bool = False,
    drain_timeout: float = 60.0,
    after_step: StepHook | None = None,
) -> MoveResult:
    """Move (or resume moving, or abort moving) *tenant_id* to another store or mode."""
    tenant = tenantry.get_tenant(validate_tenant_id(tenant_id))
    move = read_move(tenantry, tenant.id)
    resumed = move is not None
    mode = IsolationMode(isolation) if isolation is not None else None
    if move is None:
        if abort:
            raise MoveError(f"tenant {tenant.id!r} is not being moved")
        move = _start(tenantry, tenant, to_store, mode)
    elif (to_store not in (None, move.to_store)) or (mode not in (None, move.to_isolation)):
        raise MoveError(
            f"tenant {tenant.id!r} is being moved to {move.to_isolation.value} on store "
            f"{move.to_store!r}; resume that move (or abort it) first"
        )
    paused = time.monotonic()
    hook = after_step or (lambda _step: None)
    if abort:
        return _abort(tenantry, move, tenant, paused)
    tenant = tenantry.get_tenant(tenant.id)
    rows: dict[str, int] = {}
    jobs = 0
    tables = list(tenantry.tenant_metadata.sorted_tables)
    if move.step is MoveStep.COPYING:
        tenantry._sync_queue_control(tenant)  # paused next to the old copy's jobs
        hook("paused")
        _drain(tenantry, tenant, drain_timeout)
        workdir = Path(tempfile.mkdtemp(prefix=f"tenantry-move-{tenant.id}-"))
        try:
            rows, jobs, tables = _copy(tenantry, move, tenant, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        hook("copied")
        _verify(tenantry, move, tenant, tables)
        hook("verified")
        move = _switch(tenantry, move)
        hook("switched")
    else:
        rows = _count_rows(tenantry, _placement(tenant, move.to_store, move.to_isolation), tables)
    old = _placement(tenant, move.from_store, move.from_isolation)
    shared_jobs = _shares_jobs(move)
    _remove_copy(tenantry, old, keep_jobs=shared_jobs, keep_control=shared_jobs)
    hook("cleaned")
    done = _finish(tenantry, move, move.prior_status)
    window = time.monotonic() - paused
    log.info(
        "moved tenant %s to %s on %s (paused %.2f s)",
        done.id,
        done.isolation.value,
        done.store,
        window,
    )
    return MoveResult(done, rows, jobs, window, resumed)


def _start(
    tenantry: Tenantry, tenant: Tenant, to_store: str | None, mode: IsolationMode | None
) -> Move:
    store = tenantry.store(to_store or tenant.store)
    target_mode = mode or tenant.isolation
    if (store.name, target_mode) == (tenant.store, tenant.isolation):
        raise MoveError(
            f"tenant {tenant.id!r} is already {target_mode.value} on store {store.name!r}"
        )
    if tenant.status not in _MOVABLE:
        raise TenantStateError(f"tenant {tenant.id!r} is {tenant.status.value}; cannot move it")
    strategy = strategy_for(target_mode)
    strategy.check_supported(store)
    leftover = strategy.leftover(store, tenant.id, tenantry.tenant_metadata)
    if leftover is not None:
        raise MoveError(
            f"cannot move tenant {tenant.id!r}: {leftover} already exists on store "
            f"{store.name!r}; remove it first"
        )
    _check_at_head(tenantry, tenant)
    return _begin(tenantry, tenant, store.name, target_mode)


def _check_at_head(tenantry: Tenantry, tenant: Tenant) -> None:
    """The copy is made from the models (head): the original must be at head too."""
    history = tenantry.tenant_history
    if history is None:
        return
    store = tenantry.store(tenant.store)
    engine, dispose = tenant_engine(store, tenant)
    try:
        with engine.connect() as conn:
            schema = schema_name(tenant.id) if tenant.isolation is IsolationMode.SCHEMA else None
            current = history.current(conn, schema)
    finally:
        if dispose:
            engine.dispose()
    if current != history.head:
        raise MoveError(
            f"tenant {tenant.id!r} is at revision {current or '(none)'}, not at head "
            f"{history.head}; run `tenantry migrate --tenant {tenant.id}` first (or "
            f"`tenantry migrate stamp --tenant {tenant.id}` if its tables predate the history)"
        )


def _abort(tenantry: Tenantry, move: Move, tenant: Tenant, paused: float) -> MoveResult:
    if move.step is not MoveStep.COPYING:
        raise MoveError(
            f"the move of tenant {tenant.id!r} has switched to the new copy already; "
            "run it again to finish it"
        )
    target = _placement(tenant, move.to_store, move.to_isolation)
    shared_jobs = _shares_jobs(move)
    _remove_copy(tenantry, target, keep_jobs=shared_jobs, keep_control=shared_jobs)
    done = _finish(tenantry, move, move.prior_status)
    log.info("aborted the move of tenant %s; it stays on %s", tenant.id, done.store)
    return MoveResult(done, {}, 0, time.monotonic() - paused, True, aborted=True)


__all__ = ["Move", "MoveResult", "MoveStep", "move_tenant", "read_move"]

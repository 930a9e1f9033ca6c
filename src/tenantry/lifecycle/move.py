"""Moving a tenant to another store or isolation mode, resumable after a crash.

A move copies the tenant twice: once in bulk while it is still served, and
then, paused, only what changed since. The pause therefore lasts as long as
comparing the two copies and writing the difference, not as long as the
whole copy. Progress is persisted in ``tenantry_moves`` beside the catalog,
and the catalog row points at exactly one copy at every moment:

1. **start**: the move row is written (step ``bulk``). The tenant keeps its
   status: sessions and jobs go on against the old copy.
2. **bulk copy** (served): whatever an earlier attempt left at the target is
   removed; the target storage is provisioned; the tenant's tables are
   exported (one snapshot, streamed to a file) and loaded into the target in
   one transaction. Its jobs are not copied yet: they keep running.
3. **pause**: the tenant becomes ``moving`` and the step ``copying``, in one
   catalog transaction (sessions refuse with the retryable
   :class:`~tenantry.errors.TenantMovingError`, the queue stops starting its
   jobs). The move waits for other processes' catalog caches to expire, for
   the tenant's running jobs to finish and, on PostgreSQL, for transactions
   begun before then to end: the pause window starts here.
4. **delta**: per table, every row of both copies is reduced to its key and
   a hash of its values; rows only in the target are deleted, rows whose
   hash differs are updated, rows only in the source are inserted. The
   unfinished jobs are copied (replacing any the target got from an earlier
   attempt). All of it is one target transaction. No triggers are installed:
   nothing has to be removed again when a move crashes or is aborted, and it
   works the same in every mode and on SQLite.
5. **verify**: the target is read again and every row's key and hash must
   equal the source's (which implies equal row counts and equal contents),
   and so must the unfinished jobs' count and digest.
6. **switch**: the tenant's store and mode, and the move's step, change in
   one catalog transaction. From here the target copy is the tenant.
7. **clean up**: the old copy is removed; the tenant gets its status from
   before the pause back, and the move row is deleted (one transaction).

When the target is shared tables, surrogate keys are renumbered on the way
in (other tenants' rows own the old numbers). The delta must still find each
copied row, so the renumbering is kept in ``tenantry_move_keys`` on the
target store, written in the same transaction as the rows it describes, and
removed with the move.

A crash during the bulk copy leaves the tenant served from the old copy;
running the move again starts the bulk copy over (``abort=True`` removes the
partial target). A crash in the pause leaves the catalog on the old copy,
which was only read: running the move again computes the delta again against
whatever the target holds (or ``abort=True`` removes it and serves the old
copy again). A crash after the switch leaves the catalog on the new copy:
running the move again finishes the clean-up.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql as psql
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    cast,
    delete,
    func,
    insert,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError

from tenantry.errors import MoveError, TenantStateError
from tenantry.lifecycle.transfer import (
    ExportFile,
    act_as,
    check_compatible,
    encode_line,
    export_tenant,
    job_for_import,
    load_rows,
    move_sequences,
    renumbered_key,
    tenant_engine,
)
from tenantry.queue import control
from tenantry.queue.job import PENDING_STATES, JobState
from tenantry.queue.schema import jobs_table
from tenantry.queue.sources import source_of
from tenantry.tenancy.catalog import IsolationMode, Tenant, TenantStatus, moves_table, tenants_table
from tenantry.tenancy.ids import validate_tenant_id
from tenantry.tenancy.isolation import postgres as pg
from tenantry.tenancy.isolation import schema_name, strategy_for
from tenantry.tenancy.logs import get_logger
from tenantry.tenancy.models import TENANT_ID_COLUMN, TENANTRY_SCHEMA, is_tenant_table

if TYPE_CHECKING:
    from tenantry.tenantry import Tenantry

log = get_logger(__name__)

_MOVABLE = (TenantStatus.ACTIVE, TenantStatus.SUSPENDED)
#: Compared between the copies: what a job is, not who is running it.
_JOB_COLUMNS = ("queue", "kind", "payload", "priority", "max_attempts", "idempotency_key")
_BATCH = 1000
#: A job's lease, which belongs to the source's worker (see transfer.job_for_import).
_LEASE_COLUMNS = ("lease_expires_at", "lease_token", "worker_id")

#: Renumbered keys of a move into shared tables: per table, the source's key
#: and the target's. On the target store, so that it commits with the rows.
move_keys_table = Table(
    "tenantry_move_keys",
    MetaData(schema=TENANTRY_SCHEMA),
    Column("tenant_id", String(40), primary_key=True),
    Column("table_name", String(128), primary_key=True),
    Column("old_key", BigInteger, primary_key=True),
    Column("new_key", BigInteger, nullable=False),
)


class MoveStep(StrEnum):
    BULK = "bulk"  # served from the old copy; the bulk copy is made
    COPYING = "copying"  # paused; delta, jobs and verification; the catalog is on the old copy
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
class TableDelta:
    """What the pause wrote to one table of the target."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0

    @property
    def rows(self) -> int:
        return self.inserted + self.updated + self.deleted


@dataclass(frozen=True)
class MoveResult:
    tenant: Tenant
    #: Rows per table of the tenant at the end (the new copy).
    rows: dict[str, int]
    #: Unfinished jobs copied in the pause (0 when both copies share the jobs table).
    jobs: int
    #: From the pause to the end (sessions refused, jobs waiting), in this run.
    pause_seconds: float
    resumed: bool
    aborted: bool = False
    #: The whole run, bulk copy included.
    total_seconds: float = 0.0
    #: Rows copied while the tenant was served (0 if this run resumed in the pause).
    bulk_rows: int = 0
    #: Per table, what the pause changed in the target (the delta).
    delta: dict[str, TableDelta] = field(default_factory=dict)

    @property
    def delta_rows(self) -> int:
        return sum(d.rows for d in self.delta.values())


def _placement(tenant: Tenant, store: str, mode: IsolationMode) -> Tenant:
    return replace(tenant, store=store, isolation=mode)


def _shares_jobs(move: Move) -> bool:
    """Both copies keep jobs in the same table: the store's, for shared and schema tenants."""
    return move.from_store == move.to_store and IsolationMode.DATABASE not in (
        move.from_isolation,
        move.to_isolation,
    )


def _renumbers(move: Move) -> bool:
    """Shared tables number their surrogate keys for all tenants: the copy gets new ones."""
    return move.to_isolation is IsolationMode.SHARED


def _source(move: Move, tenant: Tenant) -> Tenant:
    return _placement(tenant, move.from_store, move.from_isolation)


def _target(move: Move, tenant: Tenant) -> Tenant:
    return _placement(tenant, move.to_store, move.to_isolation)


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
    """Record the move (step ``bulk``); the tenant stays as it is, served from the old copy."""
    now = datetime.now(UTC)
    move = Move(
        tenant.id, tenant.store, tenant.isolation, to_store, mode, tenant.status, MoveStep.BULK
    )
    with tenantry.catalog.engine.begin() as conn:
        current = conn.execute(
            select(tenants_table.c.status).where(tenants_table.c.id == tenant.id)
        ).scalar_one_or_none()
        if current != tenant.status.value:
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
    return move


def _pause(tenantry: Tenantry, move: Move) -> Move:
    """Status ``moving`` and step ``copying``, in one catalog transaction.

    The status to give back at the end is the one the tenant has now: it may
    have been suspended or resumed while the bulk copy ran.
    """
    now = datetime.now(UTC)
    with tenantry.catalog.engine.begin() as conn:
        current = conn.execute(
            select(tenants_table.c.status).where(tenants_table.c.id == move.tenant_id)
        ).scalar_one_or_none()
        if current not in {s.value for s in _MOVABLE}:
            raise MoveError(
                f"tenant {move.tenant_id!r} became {current} during the bulk copy; run the move "
                "again when it is active or suspended (the bulk copy starts over), or abort it"
            )
        changed = conn.execute(
            update(tenants_table)
            .where(tenants_table.c.id == move.tenant_id, tenants_table.c.status == current)
            .values(status=TenantStatus.MOVING.value, updated_at=now)
        ).rowcount
        if changed != 1:
            raise MoveError(f"tenant {move.tenant_id!r} changed while the move paused it; retry")
        conn.execute(
            update(moves_table)
            .where(moves_table.c.tenant_id == move.tenant_id)
            .values(step=MoveStep.COPYING.value, prior_status=current, updated_at=now)
        )
    tenantry.catalog.invalidate(move.tenant_id)
    return replace(move, step=MoveStep.COPYING, prior_status=TenantStatus(current))


# -- the steps ------------------------------------------------------------------------------
def _drain(tenantry: Tenantry, tenant: Tenant, timeout: float) -> None:
    """Let the pause take hold everywhere before the delta is taken.

    Other processes serve from their catalog cache for up to its TTL, and a
    job claimed before the pause runs to its end: its result must be in the
    copy, not lost with the old one. Then, on PostgreSQL, transactions that
    began before that are waited for (a session opened just before the pause
    may still commit): what they write must be in the delta's snapshot.
    """
    deadline = time.monotonic() + max(timeout, tenantry.config.catalog_cache_ttl)
    time.sleep(tenantry.config.catalog_cache_ttl)
    source = source_of(tenant, tenantry.store(tenant.store))
    engine = source.engine(write=False)
    while True:
        with engine.connect() as conn:
            running = conn.execute(
                select(func.count()).where(
                    jobs_table.c.tenant_id == tenant.id,
                    jobs_table.c.state == JobState.RUNNING.value,
                )
            ).scalar_one()
        if not running:
            break
        if time.monotonic() > deadline:
            raise MoveError(
                f"tenant {tenant.id!r} still has {running} running job(s) after {timeout:.0f} s; "
                "run the move again later (it resumes) or abort it"
            )
        time.sleep(0.2)
    if tenantry.store(tenant.store).is_postgres:
        _settle(engine, tenant, deadline)


#: Client transactions on this database, other than ours, begun before *since*. Other
#: roles' transactions are visible to a superuser or a member of pg_read_all_stats only.
_OPEN_BEFORE = text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND xact_start < :since"
)


def _settle(engine: Engine, tenant: Tenant, deadline: float) -> None:
    """Wait (until *deadline*) for the transactions open on the tenant's database to end.

    They may belong to other tenants of a shared database: past the deadline
    the move goes on, with a warning, rather than wait for them forever.
    """
    with engine.connect() as conn:
        since = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    while True:
        with engine.connect() as conn:
            still = conn.execute(_OPEN_BEFORE, {"since": since}).scalar_one()
        if not still:
            return
        if time.monotonic() > deadline:
            log.warning(
                "tenant %s: %d transaction(s) begun before the pause are still open on its "
                "database; going on (a write of this tenant they commit from now on would not "
                "be in the copy)",
                tenant.id,
                still,
            )
            return
        time.sleep(0.05)


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


def _remove_target(tenantry: Tenantry, move: Move, tenant: Tenant) -> None:
    """The target's copy and the move's renumbered keys, gone (idempotent)."""
    shared_jobs = _shares_jobs(move)
    _remove_copy(tenantry, _target(move, tenant), keep_jobs=shared_jobs, keep_control=shared_jobs)
    _forget_keys(tenantry, move)


# -- renumbered keys ----------------------------------------------------------------------
KeyMaps = dict[str, dict[Any, Any]]


def _ensure_keys_table(conn: Connection) -> None:
    name = pg.quote(conn, move_keys_table.name)
    if conn.dialect.name == "postgresql":
        schema = pg.quote(conn, TENANTRY_SCHEMA)
        conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        name = f"{schema}.{name}"
    conn.exec_driver_sql(
        f"CREATE TABLE IF NOT EXISTS {name} (tenant_id VARCHAR(40) NOT NULL, "
        "table_name VARCHAR(128) NOT NULL, old_key BIGINT NOT NULL, new_key BIGINT NOT NULL, "
        "PRIMARY KEY (tenant_id, table_name, old_key))"
    )


def _save_keys(conn: Connection, tenant_id: str, table: str, keys: dict[Any, Any]) -> None:
    rows = [
        {"tenant_id": tenant_id, "table_name": table, "old_key": old, "new_key": new}
        for old, new in keys.items()
    ]
    for start in range(0, len(rows), _BATCH):
        conn.execute(insert(move_keys_table), rows[start : start + _BATCH])


def _read_keys(conn: Connection, tenant_id: str) -> KeyMaps:
    found: KeyMaps = {}
    query = select(
        move_keys_table.c.table_name, move_keys_table.c.old_key, move_keys_table.c.new_key
    ).where(move_keys_table.c.tenant_id == tenant_id)
    for table, old, new in conn.execute(query):
        found.setdefault(table, {})[old] = new
    return found


def _forget_keys(tenantry: Tenantry, move: Move) -> None:
    if not _renumbers(move):
        return
    with tenantry.store(move.to_store).admin_engine().begin() as conn:
        _ensure_keys_table(conn)
        conn.execute(delete(move_keys_table).where(move_keys_table.c.tenant_id == move.tenant_id))


# -- bulk copy (served) -------------------------------------------------------------------
def _bulk_copy(tenantry: Tenantry, move: Move, tenant: Tenant) -> int:
    """Copy one snapshot of the tenant's tables to a fresh target; returns rows copied.

    The tenant is served meanwhile: what changes after the snapshot is the
    delta, copied in the pause. Jobs are left for the pause too (they keep
    running here until then).
    """
    _remove_target(tenantry, move, tenant)
    target = _target(move, tenant)
    store = tenantry.store(move.to_store)
    strategy_for(move.to_isolation).provision(
        store, tenant.id, tenantry.tenant_metadata, history=tenantry.tenant_history
    )

    def keep_keys(conn: Connection, keys: KeyMaps) -> None:
        if _renumbers(move):
            _ensure_keys_table(conn)
            for table, mapping in keys.items():
                _save_keys(conn, tenant.id, table, mapping)

    workdir = Path(tempfile.mkdtemp(prefix=f"tenantry-move-{tenant.id}-"))
    try:
        file = workdir / f"{tenant.id}.tenant"
        export_tenant(tenantry, tenant.id, file)
        with ExportFile(file) as export:
            head = tenantry.tenant_history.head if tenantry.tenant_history else None
            tables = check_compatible(export, tenantry.tenant_metadata, head)
            rows, _ = load_rows(
                tenantry, export, target, tables, with_jobs=False, on_loaded=keep_keys
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return sum(rows.values())


# -- comparing the copies -----------------------------------------------------------------
@dataclass
class _Shape:
    """How one table's rows are identified, compared and translated between the copies.

    Keys and hashes are in the source's terms: target values of renumbered
    keys (the table's own, and foreign keys to renumbered tables) are mapped
    back before hashing, so equal rows hash equal on both sides.
    """

    table: Table
    key: list[str]
    #: The table's own key, renumbered at the target (shared target), if any.
    renumbered: str | None
    #: (column, referred table) for foreign keys to renumbered tables.
    refs: list[tuple[str, str]]
    compared: list[str]


def _shapes(tables: list[Table], renumber: bool) -> list[_Shape]:
    shapes: list[_Shape] = []
    renumbered: set[str] = set()
    for table in tables:
        own = renumbered_key(table) if renumber else None
        refs = [
            (fk.parent.name, fk.column.table.name)
            for fk in table.foreign_keys
            if fk.column.table.name in renumbered and fk.column.primary_key
        ]
        if own is not None:
            refs.append((own, table.name))
            renumbered.add(table.name)
        key = [c.name for c in table.primary_key.columns]
        compared = [c.name for c in table.columns if c.name != own]
        shapes.append(_Shape(table, key, own, refs, compared))
    return shapes


def _row_hash(values: list[Any]) -> bytes:
    return hashlib.blake2b(encode_line([_comparable(v) for v in values]), digest_size=16).digest()


#: What a value's text form depends on, pinned the same on both servers.
_PINNED_TEXT = (
    "SELECT set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO, YMD', true), "
    "set_config('IntervalStyle', 'postgres', true), set_config('extra_float_digits', '1', true), "
    "set_config('bytea_output', 'hex', true)"
)


def _server_hashing(src: Connection, dst: Connection) -> bool:
    """Whether the two servers can hash the rows themselves (and pin their text forms).

    Between two PostgreSQL databases with one encoding, ``md5`` of a row's
    text form is equal exactly when the values are, and only the key and 32
    hex digits per row leave the server: much less to read in the pause than
    every value, and no Python per value. Elsewhere rows are hashed in Python,
    from the values as the export writes them.
    """
    if src.dialect.name != "postgresql" or dst.dialect.name != "postgresql":
        return False
    encodings = {c.exec_driver_sql("SHOW server_encoding").scalar() for c in (src, dst)}
    if len(encodings) != 1:
        return False
    for conn in (src, dst):
        conn.exec_driver_sql(_PINNED_TEXT)
    return True


def _server_hashes(conn: Connection, shape: _Shape, tenant_id: str) -> dict[tuple[Any, ...], bytes]:
    """Key -> md5 of the row's text form (JSON as ``jsonb``: its text is normalised)."""
    table = shape.table
    values = [
        cast(table.c[c], JSONB) if isinstance(table.c[c].type, JSON) else table.c[c]
        for c in shape.compared
    ]
    digest = func.md5(cast(func.row(*values), Text))
    query = select(*(table.c[k] for k in shape.key), digest).where(
        table.c[TENANT_ID_COLUMN] == tenant_id
    )
    found: dict[tuple[Any, ...], bytes] = {}
    for row in conn.execute(query, execution_options={"yield_per": _BATCH}):
        found[tuple(row[:-1])] = row[-1].encode()
    return found


def _rows_by_key(
    conn: Connection, shape: _Shape, tenant_id: str, keys: list[tuple[Any, ...]]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    table = shape.table
    columns = [table.c[k] for k in shape.key]
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    for start in range(0, len(keys), _BATCH):
        chunk = keys[start : start + _BATCH]
        where = (
            columns[0].in_([k[0] for k in chunk])
            if len(columns) == 1
            else tuple_(*columns).in_(chunk)
        )
        query = select(table).where(table.c[TENANT_ID_COLUMN] == tenant_id, where)
        for row in conn.execute(query).mappings():
            found[tuple(row[k] for k in shape.key)] = dict(row)
    return found


def _rows(conn: Connection, table: Table, tenant_id: str) -> Iterator[dict[str, Any]]:
    query = select(table).where(table.c[TENANT_ID_COLUMN] == tenant_id)
    for row in conn.execute(query, execution_options={"yield_per": _BATCH}).mappings():
        yield dict(row)


def _target_rows(
    conn: Connection, shape: _Shape, tenant_id: str, back: KeyMaps
) -> Iterator[tuple[tuple[Any, ...] | None, bytes, tuple[Any, ...]]]:
    """(key in source terms, hash in source terms, key in target terms) of each target row.

    The source key is None for a row whose renumbered values map to no source
    key (an attempt whose key map was lost left it): it is deleted, and the
    source's row inserted again.
    """
    for raw in _rows(conn, shape.table, tenant_id):
        row = raw
        if shape.refs:
            row = dict(raw)
            stray = False
            for column, referred in shape.refs:
                value = row[column]
                if value is not None:
                    old = back.get(referred, {}).get(value)
                    stray = stray or old is None
                    row[column] = old
            if stray:
                yield None, b"", tuple(raw[k] for k in shape.key)
                continue
        yield (
            tuple(row[k] for k in shape.key),
            _row_hash([row[c] for c in shape.compared]),
            tuple(raw[k] for k in shape.key),
        )


def _hashes(
    conn: Connection, shape: _Shape, tenant_id: str, back: KeyMaps
) -> tuple[dict[tuple[Any, ...], tuple[bytes, tuple[Any, ...]]], list[tuple[Any, ...]]]:
    """The target's rows by key (source terms): hash and key in target terms; and strays."""
    found: dict[tuple[Any, ...], tuple[bytes, tuple[Any, ...]]] = {}
    strays: list[tuple[Any, ...]] = []
    for key, digest, target_key in _target_rows(conn, shape, tenant_id, back):
        if key is None or key in found:
            strays.append(target_key)
        else:
            found[key] = (digest, target_key)
    return found, strays


@dataclass
class _Plan:
    shape: _Shape
    #: key (source terms) -> key (target terms), of the target rows to delete.
    gone: list[tuple[Any, ...]] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)
    new: list[dict[str, Any]] = field(default_factory=list)


def _forward(keys: KeyMaps, shape: _Shape, row: dict[str, Any]) -> dict[str, Any]:
    """A source row in the target's terms (renumbered foreign keys and own key mapped)."""
    out = dict(row)
    for column, referred in shape.refs:
        value = out[column]
        if value is None or column == shape.renumbered:
            continue
        try:
            out[column] = keys[referred][value]
        except KeyError:
            raise MoveError(
                f"table {shape.table.name!r}: {column}={value!r} refers to a row of "
                f"{referred!r} that the copy does not have"
            ) from None
    return out


def _key_filter(table: Table, columns: list[str]) -> Any:
    return and_(*(table.c[c] == bindparam(f"k_{c}") for c in columns))


@dataclass(frozen=True)
class _Synced:
    delta: dict[str, TableDelta]
    jobs: int
    #: Per table, the source's rows by key and hash (source terms): what the target must equal.
    source: dict[str, dict[tuple[Any, ...], bytes]]


def _sync(tenantry: Tenantry, move: Move, tenant: Tenant, tables: list[Table]) -> _Synced:
    """Make the target equal to the (paused) source, in one target transaction.

    If the rows cannot be written one by one (a unique value moved from one
    row to another, which the per-row updates would collide on), the
    target's rows are cleared and the whole source is copied, still in the
    pause: slower, but always possible.
    """
    target = _target(move, tenant)
    strategy_for(move.to_isolation).provision(
        tenantry.store(move.to_store),
        tenant.id,
        tenantry.tenant_metadata,
        history=tenantry.tenant_history,
    )
    tenantry.status_changed(target)  # paused beside the jobs to come
    try:
        return _apply(tenantry, move, tenant, tables, reset=False)
    except IntegrityError as exc:
        log.warning(
            "tenant %s: the delta collided in the target (%s); copying all rows in the pause",
            tenant.id,
            exc.orig,
        )
        return _apply(tenantry, move, tenant, tables, reset=True)


def _engines(
    tenantry: Tenantry, move: Move, tenant: Tenant
) -> tuple[Engine, Engine, Callable[[], None]]:
    source_store = tenantry.store(move.from_store)
    target_store = tenantry.store(move.to_store)
    source, dispose_source = tenant_engine(source_store, _source(move, tenant))
    target, dispose_target = tenant_engine(target_store, _target(move, tenant))
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


def _apply(
    tenantry: Tenantry, move: Move, tenant: Tenant, tables: list[Table], *, reset: bool
) -> _Synced:
    shapes = _shapes(tables, _renumbers(move))
    source_engine, target_engine, dispose = _engines(tenantry, move, tenant)
    try:
        with source_engine.begin() as src, target_engine.begin() as dst:
            act_as(src, tenant.id)
            act_as(dst, tenant.id)
            keys: KeyMaps = {}
            if _renumbers(move):
                _ensure_keys_table(dst)
                if reset:
                    dst.execute(
                        delete(move_keys_table).where(move_keys_table.c.tenant_id == tenant.id)
                    )
                keys = _read_keys(dst, tenant.id)
            if reset:
                for shape in reversed(shapes):
                    table = shape.table
                    dst.execute(delete(table).where(table.c[TENANT_ID_COLUMN] == tenant.id))
            back = {name: {new: old for old, new in m.items()} for name, m in keys.items()}
            by_server = _server_hashing(src, dst)
            plans, source = _plan(src, dst, shapes, tenant.id, back, by_server)
            for plan in reversed(plans):
                _delete(dst, plan, tenant.id, keys)
            for plan in plans:
                _write(dst, plan, tenant.id, keys)
            if _shares_jobs(move):
                jobs = 0
            elif by_server:
                jobs = _copy_jobs_by_server(src, dst, tenant.id)
            else:
                jobs = _copy_jobs(src, dst, tenant.id)
    finally:
        dispose()
    delta = {p.shape.table.name: TableDelta(len(p.new), len(p.changed), len(p.gone)) for p in plans}
    return _Synced(delta, jobs, source)


def _plan(
    src: Connection,
    dst: Connection,
    shapes: list[_Shape],
    tenant_id: str,
    back: KeyMaps,
    by_server: bool,
) -> tuple[list[_Plan], dict[str, dict[tuple[Any, ...], bytes]]]:
    """Per table, what differs; and the source's key -> hash (for the verification)."""
    plans: list[_Plan] = []
    source: dict[str, dict[tuple[Any, ...], bytes]] = {}
    for shape in shapes:
        plan = _Plan(shape)
        table = shape.table
        if not shape.key:  # no primary key, no identity to compare by: replaced whole
            have = dst.execute(
                select(func.count()).where(table.c[TENANT_ID_COLUMN] == tenant_id)
            ).scalar_one()
            plan.gone = [()] * have
            plan.new = list(_rows(src, table, tenant_id))
            plans.append(plan)
            continue
        if by_server and not shape.refs:
            plans.append(_plan_by_server(src, dst, shape, tenant_id, source))
            continue
        theirs, strays = _hashes(dst, shape, tenant_id, back)
        ours: dict[tuple[Any, ...], bytes] = {}
        for row in _rows(src, table, tenant_id):
            key = tuple(row[k] for k in shape.key)
            digest = _row_hash([row[c] for c in shape.compared])
            ours[key] = digest
            have_row = theirs.pop(key, None)
            if have_row is None:
                plan.new.append(row)
            elif have_row[0] != digest:
                plan.changed.append(row)
        plan.gone = [*strays, *(target_key for _, target_key in theirs.values())]
        source[table.name] = ours
        plans.append(plan)
    return plans, source


def _plan_by_server(
    src: Connection,
    dst: Connection,
    shape: _Shape,
    tenant_id: str,
    source: dict[str, dict[tuple[Any, ...], bytes]],
) -> _Plan:
    """Compare keys and server-side hashes; read whole rows only for what differs."""
    theirs = _server_hashes(dst, shape, tenant_id)
    ours = _server_hashes(src, shape, tenant_id)
    new = [k for k in ours if k not in theirs]
    changed = [k for k, digest in ours.items() if k in theirs and theirs[k] != digest]
    rows = _rows_by_key(src, shape, tenant_id, [*new, *changed])
    source[shape.table.name] = ours
    return _Plan(
        shape,
        gone=[k for k in theirs if k not in ours],
        changed=[rows[k] for k in changed],
        new=[rows[k] for k in new],
    )


def _delete(dst: Connection, plan: _Plan, tenant_id: str, keys: KeyMaps) -> None:
    table = plan.shape.table
    if not plan.gone:
        return
    if not plan.shape.key:
        dst.execute(delete(table).where(table.c[TENANT_ID_COLUMN] == tenant_id))
        return
    params = [{f"k_{c}": v for c, v in zip(plan.shape.key, k, strict=True)} for k in plan.gone]
    stmt = delete(table).where(_key_filter(table, plan.shape.key))
    for start in range(0, len(params), _BATCH):
        dst.execute(stmt, params[start : start + _BATCH])
    own = plan.shape.renumbered
    if own is not None:
        mapping = keys.get(table.name, {})
        back = {new: old for old, new in mapping.items()}
        olds = [back[k[0]] for k in plan.gone if k[0] in back]
        for old in olds:
            del mapping[old]
        for start in range(0, len(olds), _BATCH):
            dst.execute(
                delete(move_keys_table).where(
                    move_keys_table.c.tenant_id == tenant_id,
                    move_keys_table.c.table_name == table.name,
                    move_keys_table.c.old_key.in_(olds[start : start + _BATCH]),
                )
            )


def _write(dst: Connection, plan: _Plan, tenant_id: str, keys: KeyMaps) -> None:
    shape = plan.shape
    table = shape.table
    own = shape.renumbered
    if plan.changed:
        values = [c.name for c in table.columns if c.name != own and c.name not in shape.key]
        if values:
            stmt = (
                update(table)
                .where(_key_filter(table, shape.key))
                .values({c: bindparam(f"v_{c}") for c in values})
            )
            params = []
            for row in plan.changed:
                out = _forward(keys, shape, row)
                key = (keys[table.name][row[own]],) if own else tuple(out[k] for k in shape.key)
                params.append(
                    {
                        **{f"k_{c}": v for c, v in zip(shape.key, key, strict=True)},
                        **{f"v_{c}": out[c] for c in values},
                    }
                )
            for start in range(0, len(params), _BATCH):
                dst.execute(stmt, params[start : start + _BATCH])
    if not plan.new:
        return
    rows = [_forward(keys, shape, row) for row in plan.new]
    for start in range(0, len(rows), _BATCH):
        batch = rows[start : start + _BATCH]
        if own is None:
            dst.execute(insert(table), batch)
            continue
        old = [row.pop(own) for row in batch]
        returning = insert(table).returning(table.c[own], sort_by_parameter_order=True)
        fresh = dst.execute(returning, batch).scalars().all()
        added = dict(zip(old, fresh, strict=True))
        keys.setdefault(table.name, {}).update(added)
        _save_keys(dst, tenant_id, table.name, added)
    if own is None and dst.dialect.name == "postgresql":
        move_sequences(dst, table)


def _copy_jobs(src: Connection, dst: Connection, tenant_id: str) -> int:
    """The unfinished jobs, replacing whatever an earlier attempt put at the target."""
    dst.execute(delete(jobs_table).where(jobs_table.c.tenant_id == tenant_id))
    columns = [c.name for c in jobs_table.columns if c.name != "id"]
    query = (
        select(*(jobs_table.c[c] for c in columns))
        .where(
            jobs_table.c.tenant_id == tenant_id,
            jobs_table.c.state.in_([s.value for s in PENDING_STATES]),
        )
        .order_by(jobs_table.c.id)
    )
    count = 0
    batch: list[dict[str, Any]] = []
    for row in src.execute(query, execution_options={"yield_per": _BATCH}).mappings():
        batch.append(job_for_import(dict(row), tenant_id))
        count += 1
        if len(batch) >= _BATCH:
            dst.execute(insert(jobs_table), batch)
            batch.clear()
    if batch:
        dst.execute(insert(jobs_table), batch)
    return count


def _copy_jobs_by_server(src: Connection, dst: Connection, tenant_id: str) -> int:
    """:func:`_copy_jobs` between two PostgreSQL databases: one ``COPY`` out into one ``COPY`` in.

    Text format, so the two servers need not have the same binary layout;
    the text forms were pinned by :func:`_server_hashing`. A running job is
    made available again on the way, as :func:`~tenantry.lifecycle.transfer.job_for_import` does.
    """
    dst.execute(delete(jobs_table).where(jobs_table.c.tenant_id == tenant_id))
    columns = [c.name for c in jobs_table.columns if c.name != "id"]
    running = psql.Literal(JobState.RUNNING.value)
    selected: list[psql.Composable] = []
    for name in columns:
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
        table, psql.SQL(", ").join(psql.Identifier(c) for c in columns)
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


# -- verification -------------------------------------------------------------------------
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


def _jobs_digest(conn: Connection, tenant_id: str) -> tuple[int, str]:
    query = select(*(jobs_table.c[c] for c in _JOB_COLUMNS)).where(
        jobs_table.c.tenant_id == tenant_id,
        jobs_table.c.state.in_([s.value for s in PENDING_STATES]),
    )
    return _digest(conn, query)


def _verify(
    tenantry: Tenantry, move: Move, tenant: Tenant, tables: list[Table], synced: _Synced
) -> dict[str, int]:
    """Read the target again: every row's key and hash must equal the source's.

    Equal maps of key -> hash mean equal row counts and equal contents. The
    unfinished jobs (no key in common: they are numbered per database) must
    have equal counts and equal digests of what they are.
    """
    shapes = _shapes(tables, _renumbers(move))
    source_engine, target_engine, dispose = _engines(tenantry, move, tenant)
    differ: list[str] = []
    counts: dict[str, int] = {}
    try:
        with source_engine.begin() as src, target_engine.begin() as dst:
            act_as(src, tenant.id)
            act_as(dst, tenant.id)
            keys = _read_keys(dst, tenant.id) if _renumbers(move) else {}
            back = {name: {new: old for old, new in m.items()} for name, m in keys.items()}
            by_server = _server_hashing(src, dst)
            for shape in shapes:
                name = shape.table.name
                if shape.key and by_server and not shape.refs:
                    found = _server_hashes(dst, shape, tenant.id)
                    counts[name] = len(found)
                    if found != synced.source[name]:
                        expected = len(synced.source[name])
                        differ.append(f"{name}: {expected} vs {counts[name]} rows")
                elif shape.key:
                    theirs, strays = _hashes(dst, shape, tenant_id=tenant.id, back=back)
                    counts[name] = len(theirs) + len(strays)
                    expected = len(synced.source[name])
                    found = {k: digest for k, (digest, _) in theirs.items()}
                    if strays or found != synced.source[name]:
                        differ.append(f"{name}: {expected} vs {counts[name]} rows")
                else:
                    query = select(*shape.table.columns).where(
                        shape.table.c[TENANT_ID_COLUMN] == tenant.id
                    )
                    ours, theirs_digest = _digest(src, query), _digest(dst, query)
                    counts[name] = theirs_digest[0]
                    if ours != theirs_digest:
                        differ.append(f"{name}: {ours[0]} vs {theirs_digest[0]} rows")
            ours_jobs, theirs_jobs = _jobs_digest(src, tenant.id), _jobs_digest(dst, tenant.id)
            if ours_jobs != theirs_jobs:
                differ.append(f"jobs: {ours_jobs[0]} vs {theirs_jobs[0]}")
    finally:
        dispose()
    if differ:
        raise MoveError(
            f"tenant {tenant.id!r}: the copy does not match the original ({', '.join(differ)}); "
            "the catalog still points at the original. Run the move again or abort it."
        )
    return counts


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
    tenantry.status_changed(tenant)
    return tenant


def _count_rows(tenantry: Tenantry, tenant: Tenant, tables: list[Table]) -> dict[str, int]:
    engine, dispose = tenant_engine(tenantry.store(tenant.store), tenant)
    try:
        with engine.begin() as conn:
            act_as(conn, tenant.id)
            return {
                t.name: conn.execute(
                    select(func.count()).where(t.c[TENANT_ID_COLUMN] == tenant.id)
                ).scalar_one()
                for t in tables
            }
    finally:
        if dispose:
            engine.dispose()


def _revision(tenantry: Tenantry, placement: Tenant) -> str | None:
    history = tenantry.tenant_history
    if history is None:
        return None
    engine, dispose = tenant_engine(tenantry.store(placement.store), placement)
    try:
        with engine.connect() as conn:
            schema = (
                schema_name(placement.id) if placement.isolation is IsolationMode.SCHEMA else None
            )
            return history.current(conn, schema)
    finally:
        if dispose:
            engine.dispose()


def _check_at_head(tenantry: Tenantry, tenant: Tenant) -> None:
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


def _check_same_revision(tenantry: Tenantry, move: Move, tenant: Tenant, *, paused: bool) -> None:
    """Nothing migrated one copy and not the other while the tenant was served."""
    if tenantry.tenant_history is None:
        return
    old = _revision(tenantry, _source(move, tenant))
    new = _revision(tenantry, _target(move, tenant))
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


# -- the operation ------------------------------------------------------------------------
#: Called with a step's name after it completed (tests stop a move there).
StepHook = Callable[[str], None]

#: The names a :data:`StepHook` is called with, in order.
STEPS = ("started", "bulk-copied", "paused", "delta-copied", "verified", "switched", "cleaned")


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
    with _exclusive(tenantry, validate_tenant_id(tenant_id)):
        return _move_tenant(
            tenantry,
            tenant_id,
            to_store=to_store,
            isolation=isolation,
            abort=abort,
            drain_timeout=drain_timeout,
            after_step=after_step,
        )


@contextmanager
def _exclusive(tenantry: Tenantry, tenant_id: str) -> Iterator[None]:
    """One process at a time moves a tenant.

    Two runs of the same move (an operator resuming while the first still
    runs) would copy, switch and clean up against each other. A session-level
    advisory lock on the catalog database (PostgreSQL) or an exclusive file
    lock beside the catalog file (SQLite), held for the whole run, refuses the
    second one; it is released when the process dies, so a crashed move can
    be resumed at once.
    """
    engine = tenantry.catalog.engine
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            key = f"tenantry.move:{tenant_id}"
            got = conn.exec_driver_sql(
                "SELECT pg_try_advisory_lock(hashtextextended(%(k)s, 0))", {"k": key}
            ).scalar()
            conn.commit()
            if not got:
                raise MoveError(f"tenant {tenant_id!r} is being moved by another process")
            try:
                yield
            finally:
                conn.exec_driver_sql(
                    "SELECT pg_advisory_unlock(hashtextextended(%(k)s, 0))", {"k": key}
                )
                conn.commit()
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield  # one process owns an in-memory catalog
        return
    path = Path(database).with_name(f"{Path(database).name}.move-{tenant_id}.lock")
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MoveError(f"tenant {tenant_id!r} is being moved by another process") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _move_tenant(
    tenantry: Tenantry,
    tenant_id: str,
    *,
    to_store: str | None,
    isolation: IsolationMode | str | None,
    abort: bool,
    drain_timeout: float,
    after_step: StepHook | None,
) -> MoveResult:
    began = time.monotonic()
    tenant = tenantry.get_tenant(validate_tenant_id(tenant_id))
    move = read_move(tenantry, tenant.id)
    resumed = move is not None
    mode = IsolationMode(isolation) if isolation is not None else None
    hook = after_step or (lambda _step: None)
    if move is None:
        if abort:
            raise MoveError(f"tenant {tenant.id!r} is not being moved")
        move = _start(tenantry, tenant, to_store, mode)
        hook("started")
    elif (to_store not in (None, move.to_store)) or (mode not in (None, move.to_isolation)):
        raise MoveError(
            f"tenant {tenant.id!r} is being moved to {move.to_isolation.value} on store "
            f"{move.to_store!r}; resume that move (or abort it) first"
        )
    if abort:
        return _abort(tenantry, move, tenant, began)
    tables = list(tenantry.tenant_metadata.sorted_tables)
    bulk_rows = 0
    paused: float | None = None
    synced = _Synced({}, 0, {})
    if move.step is MoveStep.BULK:
        bulk_rows = _bulk_copy(tenantry, move, tenant)
        log.info("tenant %s: bulk copy of %d row(s) made while served", tenant.id, bulk_rows)
        hook("bulk-copied")
        _check_same_revision(tenantry, move, tenantry.get_tenant(tenant.id), paused=False)
        move = _pause(tenantry, move)
        paused = time.monotonic()
        tenantry.status_changed(tenantry.get_tenant(tenant.id))  # beside the old jobs
        hook("paused")
    if move.step is MoveStep.COPYING:
        if paused is None:  # resumed in the pause: it has lasted since then
            paused = time.monotonic()
        tenant = tenantry.get_tenant(tenant.id)
        _check_same_revision(tenantry, move, tenant, paused=True)
        _drain(tenantry, tenant, drain_timeout)
        synced = _sync(tenantry, move, tenant, tables)
        hook("delta-copied")
        rows = _verify(tenantry, move, tenant, tables, synced)
        hook("verified")
        move = _switch(tenantry, move)
        hook("switched")
    else:
        paused = time.monotonic()
        rows = _count_rows(tenantry, _target(move, tenant), tables)
    shared_jobs = _shares_jobs(move)
    _remove_copy(tenantry, _source(move, tenant), keep_jobs=shared_jobs, keep_control=shared_jobs)
    _forget_keys(tenantry, move)
    hook("cleaned")
    done = _finish(tenantry, move, move.prior_status)
    end = time.monotonic()
    result = MoveResult(
        done,
        rows,
        synced.jobs,
        end - paused,
        resumed,
        total_seconds=end - began,
        bulk_rows=bulk_rows,
        delta=synced.delta,
    )
    log.info(
        "moved tenant %s to %s on %s in %.2f s (paused %.2f s, %d row(s) changed in the pause)",
        done.id,
        done.isolation.value,
        done.store,
        result.total_seconds,
        result.pause_seconds,
        result.delta_rows,
    )
    return result


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


def _abort(tenantry: Tenantry, move: Move, tenant: Tenant, began: float) -> MoveResult:
    if move.step is MoveStep.SWITCHED:
        raise MoveError(
            f"the move of tenant {tenant.id!r} has switched to the new copy already; "
            "run it again to finish it"
        )
    _remove_target(tenantry, move, tenant)
    if move.step is MoveStep.BULK:  # never paused: the tenant keeps the status it has now
        with tenantry.catalog.engine.begin() as conn:
            conn.execute(delete(moves_table).where(moves_table.c.tenant_id == move.tenant_id))
        done = tenantry.get_tenant(tenant.id)
    else:
        done = _finish(tenantry, move, move.prior_status)
    log.info("aborted the move of tenant %s; it stays on %s", tenant.id, done.store)
    elapsed = time.monotonic() - began
    pause = 0.0 if move.step is MoveStep.BULK else elapsed
    return MoveResult(done, {}, 0, pause, True, aborted=True, total_seconds=elapsed)


__all__ = [
    "STEPS",
    "Move",
    "MoveResult",
    "MoveStep",
    "TableDelta",
    "move_tenant",
    "read_move",
]

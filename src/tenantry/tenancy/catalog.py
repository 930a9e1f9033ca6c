"""The tenant catalog: which tenants exist, where they live, in what state.

The catalog is a table in the catalog store's database (``tenantry.tenantry_tenants`` on
PostgreSQL). Every tenant-bound session looks its tenant up here, so reads go
through an in-process cache: entries expire after ``ttl`` seconds (the bound on
how stale another process's change can look) and local writes invalidate them
at once. On PostgreSQL, triggers on the catalog tables notify every change, and
each process drops the changed entries as the notification arrives
(:mod:`tenantry.tenancy.invalidation`); the TTL remains the fallback.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    MetaData,
    String,
    Table,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError

from tenantry.errors import TenantExistsError, TenantNotFoundError, TenantryError, TenantStateError
from tenantry.tenancy.ids import validate_tenant_id
from tenantry.tenancy.invalidation import install_triggers
from tenantry.tenancy.models import TENANTRY_SCHEMA


class TenantStatus(StrEnum):
    PROVISIONING = "provisioning"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    DELETING = "deleting"
    #: Its tables are being migrated: sessions refuse (retryably), jobs wait.
    MIGRATING = "migrating"
    #: It is being copied to another store or mode: sessions refuse (retryably), jobs wait.
    MOVING = "moving"


class IsolationMode(StrEnum):
    SHARED = "shared"
    SCHEMA = "schema"
    DATABASE = "database"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    status: TenantStatus
    isolation: IsolationMode
    store: str
    settings: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=_now)
    updated_at: datetime = field(default_factory=_now)

    @property
    def is_active(self) -> bool:
        return self.status is TenantStatus.ACTIVE

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status.value,
            "isolation": self.isolation.value,
            "store": self.store,
            "settings": self.settings,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


catalog_metadata = MetaData(schema=TENANTRY_SCHEMA)

# Prefixed: on SQLite tenantry's tables share the application's namespace.
tenants_table = Table(
    "tenantry_tenants",
    catalog_metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("status", String(20), nullable=False),
    Column("isolation", String(20), nullable=False),
    Column("store", String(40), nullable=False),
    Column("settings", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# API keys issued to tenants (tenantry.tenancy.apikeys). Beside the tenants table so
# that ensure_schema creates both, and so that deleting a tenant deletes its keys:
# a tenant later created with the same id must not inherit them.
api_keys_table = Table(
    "tenantry_api_keys",
    catalog_metadata,
    Column("id", String(16), primary_key=True),  # the key's public prefix
    Column(
        "tenant_id",
        String(40),
        ForeignKey(tenants_table.c.id, ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("name", String(200), nullable=False),
    Column("secret_hash", String(64), nullable=False),  # sha256 hex of the whole key
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
)

# A move in progress (tenantry.move): where from, where to, how far it got.
# Beside the tenants so that the switch of placement and of step is one transaction.
moves_table = Table(
    "tenantry_moves",
    catalog_metadata,
    Column(
        "tenant_id",
        String(40),
        ForeignKey(tenants_table.c.id, ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("from_store", String(40), nullable=False),
    Column("from_isolation", String(20), nullable=False),
    Column("to_store", String(40), nullable=False),
    Column("to_isolation", String(20), nullable=False),
    Column("prior_status", String(20), nullable=False),
    Column("step", String(20), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Advisory lock key for creating the catalog tables (not isolation.postgres's
# DDL key, so that creating the catalog can never wait on a caller's own DDL).
_SCHEMA_LOCK = 7433004

_UPDATABLE = frozenset({"name", "status", "settings", "isolation", "store"})


def _as_aware(value: datetime) -> datetime:
    # SQLite returns naive datetimes; everything tenantry stores is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


_STATUS_OF = {s.value: s for s in TenantStatus}  # TenantStatus(value) costs microseconds
#: Ids per ``IN (...)`` when re-reading changed tenants (SQLite's parameter limit).
_IN_CHUNK = 500


def _row_to_tenant(row: RowMapping) -> Tenant:
    return Tenant(
        id=row["id"],
        name=row["name"],
        status=TenantStatus(row["status"]),
        isolation=IsolationMode(row["isolation"]),
        store=row["store"],
        settings=dict(row["settings"] or {}),
        created_at=_as_aware(row["created_at"]),
        updated_at=_as_aware(row["updated_at"]),
    )


class Catalog:
    """CRUD over the tenants table, with a TTL cache for lookups."""

    def __init__(
        self,
        engine: Engine,
        *,
        ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        #: Called once the catalog is first used (the facade starts listening for changes).
        self._on_ready = on_ready
        self.ttl = ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, Tenant]] = {}
        # Every tenant's status, from one listing (``cache_statuses``): until
        # when it is fresh, and when entries were last invalidated locally.
        self._statuses: dict[str, TenantStatus] = {}
        self._statuses_until = 0.0
        self._invalidated: dict[str | None, float] = {}
        self._lock = threading.Lock()
        self._ready = False

    def ensure_schema(self) -> None:
        if self._ready:
            return
        # Serialised: processes starting together on a fresh database would all
        # see no table, all CREATE it, and all but one fail. SQLite's write lock
        # is taken at BEGIN (a deferred BEGIN cannot wait for it later).
        engine = self.engine.execution_options(sqlite_begin="BEGIN IMMEDIATE")
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
                conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {TENANTRY_SCHEMA}")
            catalog_metadata.create_all(conn, checkfirst=True)
            if conn.dialect.name == "postgresql":
                install_triggers(conn, tenants_table, api_keys_table)
        if self._on_ready is not None:
            self._on_ready()  # before _ready: no read may overtake it
        self._ready = True

    # -- cache --------------------------------------------------------------
    def invalidate(self, tenant_id: str | None = None) -> None:
        with self._lock:
            now = self._clock()
            if tenant_id is None:
                self._cache.clear()
                self._statuses.clear()
                self._invalidated = {None: now}
            else:
                self._cache.pop(tenant_id, None)
                self._statuses.pop(tenant_id, None)
                if len(self._invalidated) > 1000:  # only those within a ttl matter
                    self._invalidated = {
                        k: t for k, t in self._invalidated.items() if t > now - self.ttl
                    }
                self._invalidated[tenant_id] = now

    def cache_statuses(self) -> None:
        """Cache every tenant's status from one light query (id and status only).

        A worker checks each job's tenant before it starts the job; with
        thousands of tenants most jobs' tenants were not looked up within the
        ttl, so most claimed batches would wait for a catalog query first.
        Listing whole entries to keep them cached costs enough Python to hold
        up the worker's event loop (the GIL); ids and statuses alone are far
        cheaper (measured: see docs/performance.md). Fresh for ``ttl``
        from when the read began, as a lookup made then would be; a tenant
        invalidated locally since is left out (it is looked up again).
        """
        self.ensure_schema()
        began = self._clock()
        query = select(tenants_table.c.id, tenants_table.c.status)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        of = _STATUS_OF
        statuses = {tenant_id: of.get(status) or TenantStatus(status) for tenant_id, status in rows}
        with self._lock:
            if self._invalidated.get(None, -1.0) >= began:
                return  # everything was invalidated while this read ran
            for tenant_id, when in self._invalidated.items():
                if tenant_id is not None and when >= began:
                    statuses.pop(tenant_id, None)
            self._statuses = statuses
            self._statuses_until = began + self.ttl

    def status_cached(self, tenant_id: str) -> TenantStatus | None:
        """The tenant's status if an entry or the status listing is fresh; no database."""
        entry = self.get_cached(tenant_id)
        if entry is not None:
            return entry.status
        with self._lock:
            if self._statuses_until > self._clock():
                return self._statuses.get(tenant_id)
        return None

    def _remember(self, tenant: Tenant, began: float | None = None) -> Tenant:
        """Cache *tenant*, read from the database since *began*.

        Not if it was invalidated since the read began: the row read may be
        the one the invalidation was about (a change pushed from another
        process while the read ran), and caching it would keep it for a TTL.
        """
        with self._lock:
            if began is not None and (
                self._invalidated.get(None, -1.0) >= began
                or self._invalidated.get(tenant.id, -1.0) >= began
            ):
                return tenant
            self._cache[tenant.id] = (self._clock() + self.ttl, tenant)
        return tenant

    # -- reads --------------------------------------------------------------
    def get_cached(self, tenant_id: str) -> Tenant | None:
        """The cached entry if it is still fresh; never touches the database.

        No validation here: only valid ids are ever cached, so an invalid one
        misses, and ``get`` (what a miss leads to) validates. The worker asks
        this once per job.
        """
        with self._lock:
            hit = self._cache.get(tenant_id)
        return hit[1] if hit is not None and hit[0] > self._clock() else None

    def get(self, tenant_id: str, *, cached: bool = True) -> Tenant:
        if cached:
            hit = self.get_cached(tenant_id)
            if hit is not None:
                return hit
        began = self._clock()
        found = self.find(tenant_id)
        if found is None:
            self.invalidate(tenant_id)
            raise TenantNotFoundError(f"tenant {tenant_id!r} does not exist")
        return self._remember(found, began)

    def find(self, tenant_id: str) -> Tenant | None:
        """Uncached lookup that returns ``None`` for an unknown tenant."""
        validate_tenant_id(tenant_id)
        self.ensure_schema()
        with self.engine.connect() as conn:
            row = (
                conn.execute(select(tenants_table).where(tenants_table.c.id == tenant_id))
                .mappings()
                .first()
            )
        return None if row is None else _row_to_tenant(row)

    def warm(self, tenant_ids: Iterable[str]) -> None:
        """Cache these tenants with one query (those not cached and fresh already).

        A worker claiming for thousands of tenants would otherwise look each one
        up on its own before starting its job: one round trip per job.
        Unknown ids are left out; ``get`` reports them.
        """
        missing = sorted({t for t in tenant_ids if self.get_cached(t) is None})
        if not missing:
            return
        self.ensure_schema()
        began = self._clock()
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(tenants_table).where(tenants_table.c.id.in_(missing))
            ).mappings()
            for row in rows:
                self._remember(_row_to_tenant(row), began)

    def list(
        self,
        *,
        status: TenantStatus | None = None,
        store: str | None = None,
        isolation: IsolationMode | None = None,
    ) -> list[Tenant]:
        self.ensure_schema()
        query = select(tenants_table).order_by(tenants_table.c.id)
        if status is not None:
            query = query.where(tenants_table.c.status == TenantStatus(status).value)
        if store is not None:
            query = query.where(tenants_table.c.store == store)
        if isolation is not None:
            query = query.where(tenants_table.c.isolation == IsolationMode(isolation).value)
        with self.engine.connect() as conn:
            return [_row_to_tenant(r) for r in conn.execute(query).mappings()]

    def list_since(self, known: Mapping[str, Tenant]) -> builtins.list[Tenant]:
        """Every tenant, as ``list()``; whole rows are read only for those not in
        *known* as they are now (a new ``updated_at``).

        A worker lists the whole catalog at each refresh. Whole rows cost
        mostly Python (parsing each row's settings and timestamps, building the
        entries), and while that runs on its thread the worker's event loop
        waits for the GIL: jobs start late. Ids and ``updated_at`` alone are
        far cheaper (measured: see docs/performance.md). Every catalog write sets
        ``updated_at``; an edit made behind tenantry's back without it is seen
        by the next full ``list()``.
        """
        self.ensure_schema()
        with self.engine.connect() as conn:
            stamps = conn.execute(
                select(tenants_table.c.id, tenants_table.c.updated_at).order_by(tenants_table.c.id)
            ).all()
            changed = [
                tenant_id
                for tenant_id, updated_at in stamps
                if (old := known.get(tenant_id)) is None or old.updated_at != _as_aware(updated_at)
            ]
            fresh: dict[str, Tenant] = {}
            for start in range(0, len(changed), _IN_CHUNK):
                query = select(tenants_table).where(
                    tenants_table.c.id.in_(changed[start : start + _IN_CHUNK])
                )
                for row in conn.execute(query).mappings():
                    fresh[row["id"]] = _row_to_tenant(row)
        reread = set(changed)
        found = []
        for tenant_id, _ in stamps:
            # A tenant re-read but not found was deleted between the two reads.
            tenant = fresh.get(tenant_id) if tenant_id in reread else known[tenant_id]
            if tenant is not None:
                found.append(tenant)
        return found

    # -- writes ---------------------------------------------------------------
    def insert(self, tenant: Tenant) -> Tenant:
        self.ensure_schema()
        values = tenant.to_dict()
        values.update(created_at=tenant.created_at, updated_at=tenant.updated_at)
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(tenants_table).values(**values))
        except IntegrityError as exc:
            raise TenantExistsError(f"tenant {tenant.id!r} already exists") from exc
        self.invalidate(tenant.id)
        return tenant

    def update(
        self, tenant_id: str, *, expect: Sequence[TenantStatus] = (), **changes: Any
    ) -> Tenant:
        """Change fields; with *expect*, only while the status is one of those.

        The status check is part of the UPDATE's WHERE clause, so two processes
        racing to suspend/resume/delete cannot both win from the same state.
        """
        bad = set(changes) - _UPDATABLE
        if bad:
            raise TenantryError(f"cannot update tenant fields: {', '.join(sorted(bad))}")
        current = self.get(tenant_id, cached=False)
        values: dict[str, Any] = {}
        for key, value in changes.items():
            if key == "status":
                value = TenantStatus(value)
            elif key == "isolation":
                value = IsolationMode(value)
            elif key == "settings":
                value = dict(value)
            values[key] = value
        updated = replace(current, **values, updated_at=_now())
        stored = {k: (v.value if isinstance(v, StrEnum) else v) for k, v in values.items()}
        query = update(tenants_table).where(tenants_table.c.id == tenant_id)
        if expect:
            query = query.where(tenants_table.c.status.in_([TenantStatus(s).value for s in expect]))
        with self.engine.begin() as conn:
            result = conn.execute(query.values(**stored, updated_at=updated.updated_at))
        self.invalidate(tenant_id)
        if result.rowcount == 0:
            latest = self.get(tenant_id, cached=False)  # raises TenantNotFoundError if gone
            allowed = ", ".join(TenantStatus(s).value for s in expect)
            raise TenantStateError(
                f"tenant {tenant_id!r} is {latest.status.value}; expected one of: {allowed}"
            )
        return updated

    def set_status(
        self, tenant_id: str, status: TenantStatus, *, expect: Sequence[TenantStatus] = ()
    ) -> Tenant:
        """Move a tenant to *status*, optionally only from one of the *expect* states."""
        return self.update(tenant_id, expect=expect, status=status)

    def delete(self, tenant_id: str) -> None:
        validate_tenant_id(tenant_id)
        with self.engine.begin() as conn:
            conn.execute(delete(tenants_table).where(tenants_table.c.id == tenant_id))
        self.invalidate(tenant_id)

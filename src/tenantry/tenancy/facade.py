"""The tenancy facade: stores, catalog, tenant lifecycle, placement and sessions.

:class:`Tenancy` is everything tenant-isolated persistence needs and nothing
else. Applications use its subclass :class:`tenantry.Tenantry`, which wires
the job queue in through :class:`~tenantry.tenancy.hooks.TenantHooks`.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Self

from sqlalchemy import Engine, MetaData, inspect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from tenantry.errors import (
    ConfigError,
    TenantExistsError,
    TenantMigratingError,
    TenantMovingError,
    TenantryError,
    TenantStateError,
    TenantSuspendedError,
    TenantUnavailableError,
)
from tenantry.tenancy.catalog import Catalog, IsolationMode, Tenant, TenantStatus
from tenantry.tenancy.config import TenantryConfig, load_config
from tenantry.tenancy.context import current_tenant
from tenantry.tenancy.hooks import NO_HOOKS, TenantHooks, VersionHistory
from tenantry.tenancy.ids import validate_tenant_id
from tenantry.tenancy.invalidation import PushInvalidation
from tenantry.tenancy.isolation import IsolationStrategy, strategy_for
from tenantry.tenancy.isolation import postgres as pg
from tenantry.tenancy.logs import get_logger
from tenantry.tenancy.models import TENANT_ID_COLUMN, GlobalBase, TenantBase, is_tenant_table
from tenantry.tenancy.routing import GLOBAL_ROUTE, global_route
from tenantry.tenancy.session import TenantSession
from tenantry.tenancy.sqlite_guard import register_tenant_tables
from tenantry.tenancy.store import Store

if TYPE_CHECKING:
    from tenantry.tenancy.apikeys import ApiKeys

log = get_logger(__name__)


def import_object(ref: str) -> Any:
    """Import ``"package.module:attr.path"`` (how configs name application objects)."""
    module_name, _, attr_path = ref.partition(":")
    if not module_name or not attr_path:
        raise ConfigError(f"expected 'module:attribute', got {ref!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{module_name!r} has no attribute {attr_path!r}") from None
    return obj


def _as_metadata(obj: Any, what: str) -> MetaData:
    metadata = getattr(obj, "metadata", obj)
    if not isinstance(metadata, MetaData):
        raise ConfigError(f"{what} must be a MetaData or a declarative base")
    return metadata


@dataclass(frozen=True)
class Placement:
    """Where one tenant's data is and how to reach it."""

    tenant: Tenant
    store: Store
    strategy: IsolationStrategy


class Tenancy:
    """Stores, catalog and tenant-bound sessions for one application."""

    def __init__(
        self,
        config: TenantryConfig | None = None,
        *,
        tenant_metadata: MetaData | Any | None = None,
        global_metadata: MetaData | Any | None = None,
        hooks: TenantHooks = NO_HOOKS,
    ) -> None:
        self.config = config or load_config()
        if notice := self.config.data_location_notice():
            log.info(notice)
        #: Called when a tenant's storage or status changes (the queue's, in Tenantry).
        self.hooks = hooks
        self.tenant_metadata = self._metadata(
            tenant_metadata, self.config.tenant_metadata, TenantBase.metadata
        )
        self.global_metadata = self._metadata(
            global_metadata, self.config.global_metadata, GlobalBase.metadata
        )
        self._check_tenant_tables()
        register_tenant_tables(self.tenant_metadata)  # the SQLite guard must know them
        self.stores = {name: Store(cfg, hooks) for name, cfg in self.config.stores.items()}
        catalog_store = self.stores[self.config.catalog_store_name]
        self.catalog = Catalog(
            catalog_store.admin_engine(),
            ttl=self.config.catalog_cache_ttl,
            on_ready=self._catalog_ready,
        )
        #: Catalog changes of other processes, pushed (PostgreSQL; started on first use).
        self.push = PushInvalidation(
            catalog_store,
            self.catalog.invalidate,
            self._invalidate_api_key,
            ttl=self.config.catalog_cache_ttl,
        )
        self._set_up = False

    def _catalog_ready(self) -> None:
        self.push.start()

    def _invalidate_api_key(self, key_id: str | None) -> None:
        keys = self.__dict__.get("api_keys")  # only if made: nothing is cached otherwise
        if keys is not None:
            keys.invalidate(key_id)

    def catalog_staleness(self) -> float:
        """How long other processes may still act on a catalog change committed now (seconds).

        ``catalog_cache_ttl``, or far less where changes are pushed to every
        process (:mod:`tenantry.tenancy.invalidation`). What a move waits
        after pausing a tenant before it takes the tenant's data as settled.
        """
        return self.push.staleness()

    @staticmethod
    def _metadata(given: Any, ref: str | None, default: MetaData) -> MetaData:
        if given is not None:
            return _as_metadata(given, "metadata")
        if ref:
            return _as_metadata(import_object(ref), ref)
        return default

    def _check_tenant_tables(self) -> None:
        for table in self.tenant_metadata.sorted_tables:
            if not is_tenant_table(table):
                raise ConfigError(
                    f"table {table.name!r} is in the tenant metadata but not in its placeholder "
                    "schema; build tenant tables on TenantBase or tenantry.tenant_metadata()"
                )
            if TENANT_ID_COLUMN not in table.c:
                raise ConfigError(f"tenant table {table.name!r} has no tenant_id column")

    # -- set-up -----------------------------------------------------------------
    def store(self, name: str | None = None) -> Store:
        cfg = self.config.store(name or self.config.default_store)
        return self.stores[cfg.name]

    @property
    def default_store(self) -> Store:
        return self.store()

    def setup(self) -> None:
        """Create the catalog and the global tables (idempotent; once per process).

        Global tables created here from the models are at the global history's
        head and recorded so; tables that existed without a version table are
        left for ``tenantry migrate stamp``.
        """
        self.catalog.ensure_schema()
        if self._set_up:
            return
        store = self.default_store
        if store.is_postgres:
            store.prepare_wall()  # global sessions run as the session login it sets up
        with store.admin_engine().begin() as conn:
            existing = set(inspect(conn).get_table_names())
            fresh = not existing & {t.name for t in self.global_metadata.sorted_tables}
            self.global_metadata.create_all(conn, checkfirst=True)
            if store.is_postgres:
                pg.grant_access(conn, "public", store.session_grantee)
            history = self.global_history
            if fresh and history is not None and history.current(conn, None) is None:
                history.stamp(conn, None)
        self._set_up = True

    @property
    def tenant_history(self) -> VersionHistory | None:
        """The migration history new tenant tables are stamped with (none in tenancy alone)."""
        return None

    @property
    def global_history(self) -> VersionHistory | None:
        """The migration history new global tables are stamped with (none in tenancy alone)."""
        return None

    @cached_property
    def api_keys(self) -> ApiKeys:
        """The tenants' API keys (:class:`tenantry.tenancy.apikeys.ApiKeys`), kept in the catalog.

        One instance per ``Tenantry``, so a revocation clears the cache that
        the web middleware verifies keys against.
        """
        from tenantry.tenancy.apikeys import ApiKeys

        return ApiKeys(self.catalog)

    def close(self) -> None:
        self.push.stop()
        for store in self.stores.values():
            store.dispose()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.push.stop)
        for store in self.stores.values():
            await store.adispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def supported_modes(self, store: str | None = None) -> list[IsolationMode]:
        target = self.store(store)
        modes = []
        for mode in IsolationMode:
            try:
                strategy_for(mode).check_supported(target)
            except TenantryError:
                continue
            modes.append(mode)
        return modes

    # -- tenant lifecycle -----------------------------------------------------
    def create_tenant(
        self,
        tenant_id: str,
        *,
        name: str | None = None,
        isolation: IsolationMode | str = IsolationMode.SHARED,
        store: str | None = None,
        settings: Mapping[str, Any] | None = None,
        activate: bool = True,
    ) -> Tenant:
        """Register and provision a tenant; re-running finishes an interrupted run.

        The catalog row is written first with status ``provisioning``; storage is
        created with idempotent DDL; only then does the tenant become ``active``.
        A crash anywhere leaves a ``provisioning`` row that the next call resumes.
        With ``activate=False`` the tenant stays ``provisioning`` (not served)
        until :meth:`activate_tenant`: an import fills it first.
        """
        validate_tenant_id(tenant_id)
        self.hooks.check_settings(settings)  # bad settings fail here, not later
        mode = IsolationMode(isolation)
        target = self.store(store)
        strategy = strategy_for(mode)
        strategy.check_supported(target)
        self.setup()
        existing = self.catalog.find(tenant_id)
        if existing is None:
            leftover = strategy.leftover(target, tenant_id, self.tenant_metadata)
            if leftover is not None:
                raise TenantExistsError(
                    f"cannot create tenant {tenant_id!r}: {leftover} already exists on store "
                    f"{target.name!r} (left by an earlier tenant?); remove it or pick another id"
                )
            tenant = self.catalog.insert(
                Tenant(
                    id=tenant_id,
                    name=name or tenant_id,
                    status=TenantStatus.PROVISIONING,
                    isolation=mode,
                    store=target.name,
                    settings=dict(settings or {}),
                )
            )
        elif existing.status is TenantStatus.PROVISIONING and (
            existing.isolation is mode and existing.store == target.name
        ):
            log.info("resuming interrupted provisioning of %s", tenant_id)
            tenant = existing
        else:
            raise TenantExistsError(f"tenant {tenant_id!r} already exists ({existing.status})")
        log.info("provisioning tenant %s (%s on %s)", tenant_id, mode.value, target.name)
        strategy.provision(target, tenant_id, self.tenant_metadata, history=self.tenant_history)
        if not activate:
            return tenant
        return self.activate_tenant(tenant_id)

    def activate_tenant(self, tenant_id: str) -> Tenant:
        """Serve a tenant left in ``provisioning`` by ``create_tenant(activate=False)``."""
        try:
            tenant = self.catalog.set_status(
                tenant_id, TenantStatus.ACTIVE, expect=[TenantStatus.PROVISIONING]
            )
        except TenantStateError:
            # A concurrent create of the same tenant finished first.
            raise TenantExistsError(f"tenant {tenant_id!r} already exists") from None
        self.status_changed(tenant)
        log.info("tenant %s is active", tenant_id)
        return tenant

    def get_tenant(self, tenant_id: str) -> Tenant:
        return self.catalog.get(tenant_id, cached=False)

    def list_tenants(self, **filters: Any) -> list[Tenant]:
        return self.catalog.list(**filters)

    def update_tenant(
        self, tenant_id: str, *, name: str | None = None, settings: Mapping[str, Any] | None = None
    ) -> Tenant:
        changes: dict[str, Any] = {}
        if name is not None:
            changes["name"] = name
        if settings is not None:
            self.hooks.check_settings(settings)
            changes["settings"] = dict(settings)
        if not changes:
            return self.get_tenant(tenant_id)
        tenant = self.catalog.update(tenant_id, **changes)
        if settings is not None:
            self.status_changed(tenant)
        return tenant

    def suspend_tenant(self, tenant_id: str) -> Tenant:
        """Stop serving the tenant: sessions refuse, its jobs wait (they do not fail)."""
        tenant = self.catalog.set_status(
            tenant_id, TenantStatus.SUSPENDED, expect=[TenantStatus.ACTIVE]
        )
        self.status_changed(tenant)
        log.info("tenant %s suspended", tenant_id)
        return tenant

    def resume_tenant(self, tenant_id: str) -> Tenant:
        tenant = self.catalog.set_status(
            tenant_id, TenantStatus.ACTIVE, expect=[TenantStatus.SUSPENDED]
        )
        self.status_changed(tenant)
        log.info("tenant %s resumed", tenant_id)
        return tenant

    def status_changed(self, tenant: Tenant) -> bool:
        """Tell the hooks that *tenant*'s status or settings changed (after the catalog did).

        ``False`` when a hook could not follow now (its database is away); the
        catalog change stands either way, and the hooks' owner repairs later.
        """
        return self.hooks.status_changed(tenant, self.store(tenant.store))

    def delete_tenant(self, tenant_id: str) -> None:
        """Drop the tenant's data and catalog entry; re-running finishes a crashed delete."""
        tenant = self.catalog.get(tenant_id, cached=False)
        if tenant.status is not TenantStatus.DELETING:
            tenant = self.catalog.set_status(tenant_id, TenantStatus.DELETING)
        log.info("deleting tenant %s (%s on %s)", tenant_id, tenant.isolation.value, tenant.store)
        store = self.store(tenant.store)
        self.hooks.deleting(tenant, store)
        strategy_for(tenant.isolation).deprovision(store, tenant_id, self.tenant_metadata)
        self.hooks.deleted(tenant, store)
        self.catalog.delete(tenant_id)
        log.info("tenant %s deleted", tenant_id)

    # -- placement ----------------------------------------------------------------
    def placement(self, tenant_id: str | None = None, *, tenant: Tenant | None = None) -> Placement:
        """Where the current (or given) tenant lives; raises if it cannot be served."""
        if tenant is None:
            tenant = self.catalog.get(tenant_id or current_tenant())
        return self._placement_of(tenant)

    def _placement_of(self, tenant: Tenant) -> Placement:
        if tenant.status is TenantStatus.SUSPENDED:
            raise TenantSuspendedError(f"tenant {tenant.id!r} is suspended")
        if tenant.status is TenantStatus.MIGRATING:
            raise TenantMigratingError(f"tenant {tenant.id!r} is being migrated; retry in a moment")
        if tenant.status is TenantStatus.MOVING:
            raise TenantMovingError(f"tenant {tenant.id!r} is being moved; retry in a moment")
        if tenant.status is not TenantStatus.ACTIVE:
            raise TenantUnavailableError(f"tenant {tenant.id!r} is {tenant.status.value}")
        return Placement(tenant, self.store(tenant.store), strategy_for(tenant.isolation))

    # -- sessions -------------------------------------------------------------------
    def _session_kwargs(self, placement: Placement, *, is_async: bool) -> dict[str, Any]:
        tid = placement.tenant.id
        store = self.default_store

        def globals_engine() -> Engine:
            return store.async_engine().sync_engine if is_async else store.engine()

        reaches = placement.store is store and not placement.strategy.own_database
        return {
            "info": {
                "tenantry_tenant_id": tid,
                "tenantry_filter_rows": placement.strategy.filters_rows,
                GLOBAL_ROUTE: global_route(
                    self.global_metadata, tid, globals_engine, reaches_globals=reaches
                ),
            },
            "expire_on_commit": False,
        }

    def _merge_options(
        self, placement: Placement, options: dict[str, Any], *, is_async: bool = False
    ) -> dict[str, Any]:
        """Caller's session options, except that tenantry's ``info`` keys always win."""
        ours = self._session_kwargs(placement, is_async=is_async)
        merged = ours | options
        merged["info"] = {**options.get("info", {}), **ours["info"]}
        return merged

    def session(self, **session_options: Any) -> TenantSession:
        """A session bound to the current tenant's data, whatever its isolation mode.

        Raises :class:`TenantNotSetError` with no tenant in context,
        :class:`TenantSuspendedError` for a suspended tenant.
        """
        placement = self.placement()
        kwargs = self._merge_options(placement, session_options)
        engine = placement.strategy.engine(placement.store, placement.tenant.id)
        return TenantSession(bind=engine, **kwargs)

    async def open_async_session(self, **session_options: Any) -> AsyncSession:
        """Like :meth:`session`, for asyncio; the catalog lookup never blocks the loop."""
        tenant_id = current_tenant()
        tenant = self.catalog.get_cached(tenant_id)
        if tenant is None:
            tenant = await asyncio.to_thread(self.catalog.get, tenant_id)
        placement = self._placement_of(tenant)
        kwargs = self._merge_options(placement, session_options, is_async=True)
        engine = placement.strategy.async_engine(placement.store, tenant.id)
        return AsyncSession(bind=engine, sync_session_class=TenantSession, **kwargs)

    @asynccontextmanager
    async def async_session(self, **session_options: Any) -> AsyncIterator[AsyncSession]:
        """``async with tenantry.async_session() as session:`` for the current tenant."""
        session = await self.open_async_session(**session_options)
        try:
            yield session
        finally:
            await session.close()

    def global_session(self, **session_options: Any) -> Session:
        """A plain session on the default store for global (cross-tenant) tables."""
        return Session(bind=self.default_store.engine(), **session_options)

    def async_global_session(self, **session_options: Any) -> AsyncSession:
        return AsyncSession(bind=self.default_store.async_engine(), **session_options)

"""Where jobs live: one source per database that holds tenant data.

Shared and schema tenants keep their jobs in their store's database
(``tenantry.tenantry_jobs``); each database-per-tenant tenant has a jobs table in its
own database. Workers and operations reach each source as the store's admin
(owner) login, which is not subject to the jobs table's row-level security.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantry.queue import engines
from tenantry.queue.drivers import QueueDriver, driver_for
from tenantry.tenancy.catalog import Tenant
from tenantry.tenancy.isolation import strategy_for
from tenantry.tenancy.store import Store


@dataclass(frozen=True)
class JobSource:
    store: Store
    tenant_id: str | None = None  # set for a database-per-tenant database

    @property
    def key(self) -> str:
        return f"{self.store.name}/{self.tenant_id}" if self.tenant_id else self.store.name

    @property
    def driver(self) -> QueueDriver:
        return driver_for(self.store.dialect)

    def engine(self, *, write: bool = True) -> Engine:
        """Sync engine; ``write=False`` for read-only work (no write lock on SQLite)."""
        if self.tenant_id is None:
            engine = self.store.admin_engine()
        else:
            engine = self.store.tenant_engine(self.tenant_id, admin=True)
        options = self.driver.write_options
        return engine.execution_options(**options) if write and options else engine

    def enqueue_engine(self) -> Engine:
        """For standalone enqueues (``engines.enqueue_engine``), with the write options."""
        engine = engines.enqueue_engine(self.store, self.tenant_id)
        options = self.driver.write_options
        return engine.execution_options(**options) if options else engine

    def claim_engine(self) -> Engine:
        """For claim transactions, run on the worker's claim thread.

        The store's claim engine (``engines.claim_engine``), or a tenant
        database's admin engine.
        """
        if self.tenant_id is not None:
            return self.engine()
        engine = engines.claim_engine(self.store)
        options = self.driver.write_options
        return engine.execution_options(**options) if options else engine

    def async_engine(self) -> AsyncEngine:
        # Queue transactions write; on SQLite they take the write lock at BEGIN
        # so a read-then-write transaction cannot fail half-way with BUSY.
        engine = engines.queue_async_engine(self.store, self.tenant_id)
        options = self.driver.write_options
        return engine.execution_options(**options) if options else engine


def source_of(tenant: Tenant, store: Store) -> JobSource:
    if strategy_for(tenant.isolation).own_database:
        return JobSource(store, tenant.id)
    return JobSource(store)

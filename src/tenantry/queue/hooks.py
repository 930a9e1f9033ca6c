"""The queue's side of a tenant's life: jobs tables beside tenant data, control rows.

Registered on :class:`~tenantry.tenancy.facade.Tenancy` by the composition root
(:class:`tenantry.Tenantry`), so tenancy provisions, suspends and deletes
tenants without knowing that jobs exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection

from tenantry.errors import DB_ERRORS
from tenantry.queue import control
from tenantry.queue.drivers import driver_for, ensure_queue_schema, ensure_store_queue
from tenantry.queue.sources import source_of
from tenantry.tenancy.catalog import Tenant
from tenantry.tenancy.logs import get_logger
from tenantry.tenancy.store import Store

log = get_logger(__name__)


class QueueHooks:
    """Keeps every tenant's jobs next to its data and its control row in step."""

    def check_settings(self, settings: Mapping[str, Any] | None) -> None:
        control.QueueSettings.from_settings(settings)

    def store_ready(self, store: Store) -> None:
        ensure_store_queue(store)

    def database_ready(self, conn: Connection, store: Store) -> None:
        ensure_queue_schema(conn, store)

    def tenant_data_dropped(self, conn: Connection, store: Store, tenant_id: str) -> None:
        driver_for(store.dialect).delete_tenant_jobs(conn, tenant_id)

    def status_changed(self, tenant: Tenant, store: Store) -> bool:
        """Mirror the tenant's status and queue settings next to its jobs.

        If the jobs' database is unreachable now, workers still re-check the
        catalog before starting a job, and repair the row when they next
        reconcile.
        """
        try:
            source = source_of(tenant, store)
            if source.tenant_id is None:
                ensure_store_queue(source.store)  # a tenant's own database has it already
            with source.engine().begin() as conn:
                control.sync(conn, [tenant])
        except DB_ERRORS as exc:
            log.warning(
                "queue control of tenant %s not updated (%s); workers will repair it",
                tenant.id,
                type(exc).__name__,
                extra={"tenant_id": tenant.id},
            )
            return False
        return True

    def deleting(self, tenant: Tenant, store: Store) -> None:
        if not self.status_changed(tenant, store):  # paused: no new starts
            return
        source = source_of(tenant, store)
        with source.engine().begin() as conn:
            cancelled = driver_for(store.dialect).cancel_tenant_jobs(conn, tenant.id)
        if cancelled:
            log.info("cancelled %d unfinished job(s) of tenant %s", cancelled, tenant.id)

    def deleted(self, tenant: Tenant, store: Store) -> None:
        source = source_of(tenant, store)
        if source.tenant_id is not None:
            return  # the dropped database took its control row along
        with source.engine().begin() as conn:
            control.remove(conn, tenant.id)

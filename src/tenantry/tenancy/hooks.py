"""What other parts of tenantry do when a tenant's storage or status changes.

Tenancy places tenants and creates their storage; it does not know what else
lives beside a tenant's data. The job queue does (its jobs table sits in the
same database, and its control rows mirror each tenant's status), so it
registers an implementation of :class:`TenantHooks` through the composition
root (:class:`tenantry.Tenantry`). Tenancy calls the hooks at the points
below and never imports the queue.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection
from sqlalchemy.sql import Executable

if TYPE_CHECKING:
    from tenantry.tenancy.catalog import Tenant
    from tenantry.tenancy.store import Store


class TenantHooks(Protocol):
    def check_settings(self, settings: Mapping[str, Any] | None) -> None:
        """Raise a :class:`~tenantry.errors.TenantryError` for settings that cannot work.

        Called before a tenant is created or its settings change, so a bad
        value is refused before anything is written.
        """

    def store_ready(self, store: Store) -> None:
        """The store's own database is about to hold shared or schema tenants."""

    def database_ready(self, conn: Connection, store: Store) -> None:
        """A tenant database has its tables; *conn* is in its provisioning transaction."""

    def tenant_data_dropped(self, conn: Connection, store: Store, tenant_id: str) -> None:
        """A tenant's data in the store's own database is being dropped in *conn*'s transaction.

        Whatever else of the tenant's lives there goes in the same transaction.
        """

    def status_changed(self, tenant: Tenant, store: Store) -> bool:
        """Mirror the tenant's new status or settings; ``False`` if that failed for now."""

    def deleting(self, tenant: Tenant, store: Store) -> None:
        """The tenant is about to lose its storage (it is ``deleting`` already)."""

    def deleted(self, tenant: Tenant, store: Store) -> None:
        """The tenant's storage is gone; its catalog row goes next."""


class VersionHistory(Protocol):
    """A migration history that provisioning records fresh tables against.

    Tables made from the models are at the history's head; a history stamps
    them so, in the same transaction that created them.
    """

    @property
    def head(self) -> str | None: ...

    def current(self, conn: Connection, schema: str | None) -> str | None: ...

    def stamp(self, conn: Connection, schema: str | None) -> None: ...

    def stamp_statements(self, dialect_name: str, schema: str | None) -> list[Executable]:
        """The statements that create the version table and record head."""


class NoHooks:
    """Tenancy alone: nothing lives beside the tenants' data."""

    def check_settings(self, settings: Mapping[str, Any] | None) -> None:
        return None

    def store_ready(self, store: Store) -> None:
        return None

    def database_ready(self, conn: Connection, store: Store) -> None:
        return None

    def tenant_data_dropped(self, conn: Connection, store: Store, tenant_id: str) -> None:
        return None

    def status_changed(self, tenant: Tenant, store: Store) -> bool:
        return True

    def deleting(self, tenant: Tenant, store: Store) -> None:
        return None

    def deleted(self, tenant: Tenant, store: Store) -> None:
        return None


NO_HOOKS: TenantHooks = NoHooks()

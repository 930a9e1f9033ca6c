"""The narrow protocol every isolation mode implements.

Everything mode-specific lives behind it: where a tenant's tables are, how a
session is pointed at them, what runs at the start of each transaction, and
how the tenant's storage is created and dropped. The rest of tenantry never
asks "which mode is this?".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from sqlalchemy import Engine, MetaData
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantry.tenancy.catalog import IsolationMode
from tenantry.tenancy.store import Store

if TYPE_CHECKING:
    from tenantry.tenancy.hooks import VersionHistory


class IsolationStrategy(Protocol):
    mode: IsolationMode
    #: Whether ORM statements must be filtered by ``tenant_id`` (shared tables).
    filters_rows: bool
    #: Whether the tenant has a database of its own (dropping it drops everything of it).
    own_database: bool
    #: Whether other tenants' rows live in the same tables, so that surrogate keys are
    #: numbered for all of them (a copy of a tenant's rows gets new keys there).
    shares_tables: bool

    def data_schema(self, tenant_id: str) -> str | None:
        """The schema holding the tenant's tables (None: the database's default)."""

    def check_supported(self, store: Store) -> None:
        """Raise :class:`~tenantry.errors.UnsupportedIsolation` if *store* cannot host it."""

    def engine(self, store: Store, tenant_id: str) -> Engine:
        """The (sync) engine whose connections reach the tenant's tables.

        On PostgreSQL its every transaction starts bound to the tenant
        (:mod:`tenantry.tenancy.binding`); the same holds for the other engines.
        """

    def async_engine(self, store: Store, tenant_id: str) -> AsyncEngine: ...

    def admin_engine(self, store: Store, tenant_id: str) -> Engine:
        """An engine of the admin role whose connections reach the tenant's tables and jobs.

        With :attr:`own_database` it is a new engine of its own, which the caller
        disposes; otherwise it shares the store's admin pool.
        """

    def leftover(self, store: Store, tenant_id: str, metadata: MetaData) -> str | None:
        """Describe storage already holding this tenant id's data (None if there is none).

        A brand-new tenant must not silently adopt what an earlier tenant with
        the same id left behind (a database, a schema, rows).
        """

    def provision(
        self,
        store: Store,
        tenant_id: str,
        metadata: MetaData,
        *,
        history: VersionHistory | None = None,
    ) -> None:
        """Create the tenant's storage and tables; must be idempotent.

        With a tenant migration *history*, the tables are recorded as being at
        its head (they were made from the models, which are head).
        """

    def deprovision(self, store: Store, tenant_id: str, metadata: MetaData) -> None:
        """Drop the tenant's data; must be idempotent."""

    def drop_tables(self, store: Store, tenant_id: str, metadata: MetaData) -> None:
        """Drop the tenant's tables (or rows) only; must be idempotent.

        Unlike :meth:`deprovision`, what the store's hooks keep for the tenant
        beside its tables (its jobs) stays, for a copy of the tenant that
        shares it. A tenant with :attr:`own_database` has nothing beside its
        tables: its database goes.
        """

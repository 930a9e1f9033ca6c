"""How applications declare tables: tenant-scoped versus global.

Tenant tables live in a MetaData whose schema is a *placeholder*
(:data:`TENANT_SCHEMA`). Every engine tenantry hands out translates that
placeholder with ``schema_translate_map``: to the tenant's schema in schema mode,
to the default schema in shared and database mode. A query that somehow runs
without tenantry's translation fails on a schema that does not exist instead of
silently reading some other tenant's data: the model fails closed.

Every tenant table carries a ``tenant_id`` column in every isolation mode. In
shared mode it is the isolation key; in the other modes it costs little and
lets a tenant move between modes (and stores) without rewriting rows.
"""

from __future__ import annotations

from sqlalchemy import MetaData, String, Table
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Placeholder schema of tenant tables; never exists in a real database.
TENANT_SCHEMA = "tenantry_tenant"
#: Schema of tenantry's own tables (catalog, jobs) on PostgreSQL.
TENANTRY_SCHEMA = "tenantry"
TENANT_ID_COLUMN = "tenant_id"

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def tenant_metadata() -> MetaData:
    """A MetaData for tenant tables, for applications that bring their own base."""
    return MetaData(schema=TENANT_SCHEMA, naming_convention=NAMING_CONVENTION)


def global_metadata() -> MetaData:
    return MetaData(naming_convention=NAMING_CONVENTION)


class TenantScoped:
    """Mixin for tenant-scoped ORM classes: adds ``tenant_id``.

    ORM queries on subclasses are filtered to the session's tenant in shared
    mode, and new rows are stamped with it in every mode.
    """

    tenant_id: Mapped[str] = mapped_column(String(40), index=True, nullable=False)


class TenantBase(TenantScoped, DeclarativeBase):
    """Ready-made declarative base for tenant tables."""

    metadata = tenant_metadata()


class GlobalBase(DeclarativeBase):
    """Ready-made declarative base for global (cross-tenant) tables."""

    metadata = global_metadata()


def is_tenant_table(table: Table) -> bool:
    return table.schema == TENANT_SCHEMA

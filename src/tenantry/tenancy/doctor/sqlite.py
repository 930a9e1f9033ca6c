"""The one question on SQLite: whether tenants filtered by row have a wall below the ORM.

That wall is the statement guard of :mod:`tenantry.tenancy.sqlite_guard`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from sqlalchemy.exc import DBAPIError

from tenantry.errors import TenantryError
from tenantry.tenancy.catalog import Tenant
from tenantry.tenancy.doctor.findings import Finding
from tenantry.tenancy.facade import Tenancy
from tenantry.tenancy.isolation import strategy_for
from tenantry.tenancy.models import TENANT_ID_COLUMN, is_tenant_table
from tenantry.tenancy.store import Store


def sqlite_store(tenancy: Tenancy, store: Store, tenants: Sequence[Tenant]) -> list[Finding]:
    """Shared-mode tenants on SQLite need the statement guard, or only the ORM stands guard.

    The guard is checked by what it does, not by its presence alone: a raw
    statement through the store's app engine must be refused.
    """
    if not any(strategy_for(t.isolation).filters_rows for t in tenants):
        return []
    if _sqlite_guard_refuses(tenancy, store):
        return []
    return [
        Finding(
            store.name,
            f"store {store.name} (SQLite)",
            "shared-mode tenants on SQLite have only the ORM filter as a wall",
            "place tenants in database mode",
            check="sqlite",
        )
    ]


def _sqlite_guard_refuses(tenancy: Tenancy, store: Store) -> bool:
    """Whether the store's app engine refuses what the guard refuses.

    With the application's tenant tables declared (``tenant_metadata``,
    ``--models``), a raw ``SELECT`` on one of them is tried. Without, the
    guard's installation is what can be checked: it refuses ``ATTACH`` on
    every connection, whatever the tables.
    """
    if importlib.util.find_spec("tenantry.tenancy.sqlite_guard") is None:
        return False
    declared = {t.name for t in tenancy.tenant_metadata.sorted_tables if is_tenant_table(t)}
    with store.engine().connect() as conn:
        existing = {
            row[0]
            for row in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        probe = min(declared & existing, default=None)
        if probe is None:
            statement = "ATTACH DATABASE ':memory:' AS tenantry_doctor_probe"
        else:
            quoted = conn.dialect.identifier_preparer.quote(probe)
            statement = f"SELECT {TENANT_ID_COLUMN} FROM {quoted} LIMIT 0"
        try:
            conn.exec_driver_sql(statement)
        except TenantryError:
            return True  # the guard's own refusal
        except DBAPIError as exc:
            if "not authorized" in str(exc.orig):
                return True  # SQLite's, when the authorizer denies
            raise
        finally:
            conn.rollback()
        if probe is None:
            conn.exec_driver_sql("DETACH DATABASE tenantry_doctor_probe")
    return False

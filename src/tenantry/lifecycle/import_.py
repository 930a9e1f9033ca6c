"""Create a tenant from an export file, in any mode on any store.

Named with a trailing underscore because ``import`` is a keyword.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tenantry.errors import TenantExistsError
from tenantry.lifecycle.archive.format import ExportFile, check_compatible
from tenantry.lifecycle.rowcopy import load_rows
from tenantry.tenancy.catalog import IsolationMode, Tenant
from tenantry.tenancy.facade import Tenancy
from tenantry.tenancy.ids import validate_tenant_id
from tenantry.tenancy.isolation import strategy_for
from tenantry.tenancy.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class ImportResult:
    tenant: Tenant
    rows: dict[str, int]
    jobs: int


def import_tenant(
    tenantry: Tenancy,
    path: str | Path,
    *,
    as_id: str | None = None,
    store: str | None = None,
    isolation: IsolationMode | str | None = None,
) -> ImportResult:
    """Create a tenant from an export file; verified completely before anything changes.

    The new tenant stays ``provisioning`` (not served) while its rows are
    loaded in one transaction; if loading fails, the tenant is deleted again.
    """
    with ExportFile(path) as export:
        manifest = export.manifest
        new_id = validate_tenant_id(as_id if as_id is not None else manifest.tenant_id)
        mode = IsolationMode(isolation or manifest.tenant.get("isolation", "shared"))
        target = tenantry.store(store)
        strategy_for(mode).check_supported(target)
        history = tenantry.tenant_history
        tables = check_compatible(
            export, tenantry.tenant_metadata, history.head if history else None
        )
        export.verify()
        if tenantry.catalog.find(new_id) is not None:
            raise TenantExistsError(
                f"tenant {new_id!r} already exists; nothing was imported (choose another id "
                "with --as)"
            )
        tenant = tenantry.create_tenant(
            new_id,
            name=str(manifest.tenant.get("name") or new_id),
            isolation=mode,
            store=target.name,
            settings=dict(manifest.tenant.get("settings") or {}),
            activate=False,
        )
        try:
            rows, jobs = load_rows(tenantry, export, tenant, tables)
        except BaseException:
            log.warning("import of %s failed; removing the half-made tenant", new_id)
            tenantry.delete_tenant(new_id)
            raise
        tenant = tenantry.activate_tenant(new_id)
    log.info(
        "imported tenant %s from %s (%d rows, %d jobs)", new_id, path, sum(rows.values()), jobs
    )
    return ImportResult(tenant, rows, jobs)

"""Create a tenant from an export file, in any mode on any store.

Named with a trailing underscore because ``import`` is a keyword.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenantry.errors import TenantExistsError
from tenantry.lifecycle.archive.format import ExportFile, TableEntry, check_compatible
from tenantry.lifecycle.export import Progress, reported_rows
from tenantry.lifecycle.rowcopy import load_rows
from tenantry.tenancy.catalog import IsolationMode, Tenant
from tenantry.tenancy.facade import Tenancy
from tenantry.tenancy.ids import validate_tenant_id
from tenantry.tenancy.isolation import strategy_for
from tenantry.tenancy.logs import get_logger

log = get_logger(__name__)


class ProgressExportFile(ExportFile):
    """An export file whose rows report ``load <table>`` (``load jobs``) as they are consumed.

    The loader (:func:`~tenantry.lifecycle.rowcopy.load_rows`) reads the rows
    of each table as it inserts them, so counting what it has consumed is
    counting what it has loaded, without the loader knowing about progress.
    The manifest's row counts are the totals.
    """

    def __init__(self, path: str | Path, progress: Progress | None) -> None:
        super().__init__(path)
        self.progress = progress

    def rows(self, entry: TableEntry) -> Iterator[dict[str, Any]]:
        rows = super().rows(entry)
        if self.progress is None:
            return rows
        label = "jobs" if entry is self.manifest.jobs else entry.name
        return reported_rows(rows, self.progress, f"load {label}", entry.rows)


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
    progress: Progress | None = None,
) -> ImportResult:
    """Create a tenant from an export file; verified completely before anything changes.

    The new tenant stays ``provisioning`` (not served) while its rows are
    loaded in one transaction; if loading fails, the tenant is deleted again.
    Its jobs get new ids from the target (the file does not carry ids; a move
    keeps them).
    With *progress*, the check of the whole file is reported as ``verify file``
    (started, then done) and the load per table as ``load <table>``.
    """
    with ProgressExportFile(path, progress) as export:
        manifest = export.manifest
        new_id = validate_tenant_id(as_id if as_id is not None else manifest.tenant_id)
        mode = IsolationMode(isolation or manifest.tenant.get("isolation", "shared"))
        target = tenantry.store(store)
        strategy_for(mode).check_supported(target)
        history = tenantry.tenant_history
        tables = check_compatible(
            export, tenantry.tenant_metadata, history.head if history else None
        )
        if progress is not None:
            progress("verify file", 0, None)
        export.verify()
        if progress is not None:
            progress("verify file", 1, 1)
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

"""Per-tenant backups with the database's own tools where one tenant is one object.

| Tenant | Tool | File |
|---|---|---|
| schema (PostgreSQL) | ``pg_dump --format=custom --schema t_<id>`` | ``<id>-<UTC time>.dump`` |
| database (PostgreSQL) | ``pg_dump --format=custom`` of its database | ``<id>-<UTC time>.dump`` |
| database (SQLite) | SQLite's online backup API (consistent under WAL) | ``<id>-<UTC time>.db`` |
| shared | a tenant export (its rows are mixed with others') | ``<id>-<UTC time>.tenant`` |

The PostgreSQL tools get the connection through ``PG*`` environment variables
of the child process, so a password never appears on a command line (where
``ps`` would show it) or in an error message.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tenantry.errors import BackupError, TenantStateError
from tenantry.lifecycle.export import Progress, export_tenant
from tenantry.tenancy.catalog import TenantStatus
from tenantry.tenancy.facade import Tenancy
from tenantry.tenancy.ids import validate_tenant_id
from tenantry.tenancy.isolation import strategy_for
from tenantry.tenancy.logs import get_logger
from tenantry.tenancy.store import Store

log = get_logger(__name__)

_BACKED_UP = (TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.MIGRATING)


@dataclass(frozen=True)
class Backup:
    tenant_id: str
    path: Path
    method: str


def backup_tenant(
    tenantry: Tenancy,
    tenant_id: str,
    directory: str | Path,
    *,
    progress: Progress | None = None,
) -> Backup:
    """Write one backup file of *tenant_id* into *directory* and return what was made.

    *directory* is created if it does not exist, but its parent must: a typo
    in a path (``/bakups/acme``) is refused rather than silently becoming a
    new tree nobody looks at. With *progress*, a shared tenant's export
    reports each table (``export <table>``); the database tools, which say
    nothing while they run, are reported as ``backup`` started, then done.
    """
    folder = backup_directory(directory)
    tenant = tenantry.get_tenant(validate_tenant_id(tenant_id))
    if tenant.status not in _BACKED_UP:
        raise TenantStateError(f"tenant {tenant.id!r} is {tenant.status.value}; cannot back it up")
    store = tenantry.store(tenant.store)
    folder.mkdir(exist_ok=True)
    stem = f"{tenant.id}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}"
    strategy = strategy_for(tenant.isolation)
    schema = strategy.data_schema(tenant.id)
    if strategy.shares_tables:
        path = folder / f"{stem}.tenant"
        export_tenant(tenantry, tenant.id, path, progress=progress)
        made = Backup(tenant.id, path, "export")
        log.info("backed up tenant %s with %s to %s", tenant.id, made.method, made.path)
        return made
    if progress is not None:
        progress("backup", 0, None)
    if schema is not None:
        path = folder / f"{stem}.dump"
        _pg_dump(store, None, ["--schema", schema], path)
        made = Backup(tenant.id, path, "pg_dump --schema")
    elif store.is_postgres:
        path = folder / f"{stem}.dump"
        _pg_dump(store, store.tenant_database_name(tenant.id), [], path)
        made = Backup(tenant.id, path, "pg_dump")
    else:
        path = folder / f"{stem}.db"
        _sqlite_backup(store.tenant_database_name(tenant.id), path)
        made = Backup(tenant.id, path, "sqlite backup")
    if progress is not None:
        progress("backup", 1, 1)
    log.info("backed up tenant %s with %s to %s", tenant.id, made.method, made.path)
    return made


def backup_directory(directory: str | Path) -> Path:
    """*directory* if it exists or only its last part is missing; :class:`BackupError` otherwise."""
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise BackupError(f"{folder} is not a directory")
    if not folder.exists() and not folder.absolute().parent.is_dir():
        raise BackupError(
            f"{folder.absolute().parent} does not exist; create it first "
            "(only the last part of the backup directory is created)"
        )
    return folder


def _pg_dump(store: Store, database: str | None, options: list[str], path: Path) -> None:
    binary = shutil.which("pg_dump")
    if binary is None:
        raise BackupError(
            "pg_dump is not on PATH; install the PostgreSQL client tools "
            "(the same major version as the server, or newer)"
        )
    url = store.config.parsed_url(admin=True)
    env = {
        **os.environ,
        "PGHOST": url.host or "localhost",
        "PGPORT": str(url.port or 5432),
        "PGUSER": url.username or "",
        "PGDATABASE": database or url.database or "",
    }
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    partial = path.with_name(f".{path.name}.partial")
    command = [binary, "--format=custom", "--no-password", f"--file={partial}", *options]
    try:
        # The arguments are tenantry-validated names and paths; no shell is involved.
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)  # noqa: S603
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise BackupError(f"pg_dump failed (exit {done.returncode}): {reason}")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _sqlite_backup(source: str, path: Path) -> None:
    if not Path(source).exists():
        raise BackupError(f"the tenant's database file {source} does not exist")
    partial = path.with_name(f".{path.name}.partial")
    src = sqlite3.connect(source)
    try:
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst)  # a consistent copy, also while others write (WAL)
        finally:
            dst.close()
        os.replace(partial, path)
    finally:
        src.close()
        partial.unlink(missing_ok=True)

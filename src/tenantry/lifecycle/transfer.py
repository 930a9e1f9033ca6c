"""Export one tenant to a portable file, and import it into any mode on any store.

The file is a zip archive::

    manifest.json        format, format version, tenant, source revision,
                         per table: columns, row count, sha256 of its data file
    data/NNN_<table>.jsonl   one JSON array per row, in the manifest's column order
    jobs.jsonl           the tenant's unfinished jobs
    checksum.sha256      sha256 of manifest.json

Every data file's digest is in the manifest and the manifest's digest is in
``checksum.sha256``, so one chain covers the whole content; zip's own CRCs
catch damage below that. An import checks all of it, and that every table
and column belongs to this application at the same migration revision,
before it changes anything.

Values are written by type, not by the database's text form, so they come
back the same on another database: datetimes, dates, times and intervals as
ISO strings, decimals as strings, bytes as base64, JSON column values and
non-finite floats tagged (``{"$dt": "..."}``, ``{"$dec": "..."}``, ...).

An export is one snapshot: every table and the jobs are read in one read-only
transaction (``REPEATABLE READ`` on PostgreSQL; one read transaction on SQLite,
which in WAL mode sees the database as of its first read). Writes that
commit meanwhile are either wholly in the file or not at all.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, Integer, MetaData, Table, func, insert, select, text

from tenantry.errors import (
    ExportChecksumError,
    ExportCorruptError,
    ExportError,
    ExportFormatError,
    ExportRevisionError,
    TenantExistsError,
    TenantStateError,
)
from tenantry.queue.job import PENDING_STATES, JobState
from tenantry.queue.schema import jobs_table
from tenantry.tenancy.catalog import IsolationMode, Tenant, TenantStatus
from tenantry.tenancy.ids import validate_tenant_id
from tenantry.tenancy.isolation import postgres as pg
from tenantry.tenancy.isolation import schema_name, strategy_for
from tenantry.tenancy.logs import get_logger
from tenantry.tenancy.models import TENANT_ID_COLUMN, TENANT_SCHEMA, TENANTRY_SCHEMA
from tenantry.tenancy.store import Store

if TYPE_CHECKING:
    from tenantry.tenantry import Tenantry

log = get_logger(__name__)

FORMAT = "tenantry-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CHECKSUM = "checksum.sha256"
JOBS_FILE = "jobs.jsonl"
_BATCH = 1000
_EXPORTABLE = (
    TenantStatus.ACTIVE,
    TenantStatus.SUSPENDED,
    TenantStatus.MIGRATING,
    TenantStatus.MOVING,
)


# -- values -------------------------------------------------------------------------
def encode(value: Any) -> Any:
    """A JSON-safe form of *value* that :func:`decode` turns back into the same value."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, date):
        return {"$date": value.isoformat()}
    if isinstance(value, time):
        return {"$time": value.isoformat()}
    if isinstance(value, timedelta):
        return {"$td": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, Decimal):
        return {"$dec": str(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, Enum):
        return {"$enum": value.name}
    if isinstance(value, dict | list):
        return {"$json": value}
    raise ExportError(f"cannot export a value of type {type(value).__name__}")


_DECODERS: dict[str, Any] = {
    "$float": float,
    "$dt": datetime.fromisoformat,
    "$date": date.fromisoformat,
    "$time": time.fromisoformat,
    "$td": lambda v: timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
    "$dec": Decimal,
    "$b64": base64.b64decode,
    "$uuid": uuid.UUID,
    "$enum": str,  # SQLAlchemy's Enum type accepts the member's name
    "$json": lambda v: v,
}


def decode(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        raise ExportCorruptError(f"unexpected value in export: {str(value)[:80]}")
    ((tag, raw),) = value.items()
    decoder = _DECODERS.get(tag)
    if decoder is None:
        raise ExportCorruptError(f"unknown value tag {tag!r} in export")
    try:
        return decoder(raw)
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise ExportCorruptError(f"bad {tag} value in export: {str(raw)[:80]}") from exc


#: One encoder for every line: ``json.dumps`` with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode_line(row: Sequence[Any]) -> bytes:
    return (_ENCODER.encode([encode(v) for v in row]) + "\n").encode()


# -- results ------------------------------------------------------------------------
@dataclass(frozen=True)
class TableEntry:
    name: str
    file: str
    columns: list[str]
    rows: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.file,
            "columns": self.columns,
            "rows": self.rows,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class Manifest:
    tenant: dict[str, Any]
    revision: str | None
    dialect: str
    tables: list[TableEntry]
    jobs: TableEntry
    created_at: str

    @property
    def tenant_id(self) -> str:
        return str(self.tenant["id"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": self.created_at,
            "tenant": self.tenant,
            "source": {"dialect": self.dialect, "revision": self.revision},
            "tables": [t.to_dict() for t in self.tables],
            "jobs": self.jobs.to_dict(),
        }


# -- where a tenant's rows are ----------------------------------------------------------
def tenant_engine(store: Store, tenant: Tenant) -> tuple[Engine, bool]:
    """An admin engine whose connections reach the tenant's tables and jobs (True: dispose)."""
    if tenant.isolation is IsolationMode.DATABASE:
        return store.tenant_admin_engine(tenant.id), True
    if tenant.isolation is IsolationMode.SCHEMA:
        translate = {TENANT_SCHEMA: schema_name(tenant.id), TENANTRY_SCHEMA: TENANTRY_SCHEMA}
        return store.admin_engine().execution_options(schema_translate_map=translate), False
    return store.admin_engine(), False


def act_as(conn: Connection, tenant_id: str) -> None:
    """The RLS tenant of this transaction (the admin may be subject to FORCE RLS)."""
    if conn.dialect.name == "postgresql":
        sql, params = pg.session_setup(tenant_id, "", "public")
        conn.execute(text(sql), params)


def _tenant_filter(table: Table, tenant: Tenant) -> Any:
    # Rows of other tenants share the tables only in shared mode, but the
    # filter is right everywhere: every tenant table carries tenant_id.
    return table.c[TENANT_ID_COLUMN] == tenant.id


# -- export -------------------------------------------------------------------------
def export_tenant(tenantry: Tenantry, tenant_id: str, path: str | Path) -> Manifest:
    """Write *tenant_id*'s rows and unfinished jobs to *path* (replaced atomically)."""
    tenant = tenantry.get_tenant(validate_tenant_id(tenant_id))
    if tenant.status not in _EXPORTABLE:
        raise TenantStateError(f"tenant {tenant.id!r} is {tenant.status.value}; cannot export it")
    store = tenantry.store(tenant.store)
    history = tenantry.tenant_history
    target = Path(path)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    engine, dispose = tenant_engine(store, tenant)
    if store.is_postgres:
        engine = engine.execution_options(
            isolation_level="REPEATABLE READ", postgresql_readonly=True
        )
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            with engine.begin() as conn:
                act_as(conn, tenant.id)
                revision = None
                if history is not None:
                    schema = (
                        schema_name(tenant.id) if tenant.isolation is IsolationMode.SCHEMA else None
                    )
                    revision = history.current(conn, schema)
                entries = [
                    _export_table(zf, conn, table, tenant, i)
                    for i, table in enumerate(tenantry.tenant_metadata.sorted_tables)
                ]
                jobs = _export_jobs(zf, conn, tenant)
            manifest = Manifest(
                tenant={k: v for k, v in tenant.to_dict().items() if k != "status"},
                revision=revision,
                dialect=store.dialect,
                tables=entries,
                jobs=jobs,
                created_at=datetime.now(UTC).isoformat(),
            )
            body = json.dumps(manifest.to_dict(), indent=2, sort_keys=True).encode()
            zf.writestr(MANIFEST, body)
            zf.writestr(CHECKSUM, hashlib.sha256(body).hexdigest() + "\n")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
        if dispose:
            engine.dispose()
    log.info(
        "exported tenant %s: %d table(s), %d row(s), %d job(s) to %s",
        tenant.id,
        len(entries),
        sum(e.rows for e in entries),
        jobs.rows,
        target,
    )
    return manifest


def _write_rows(zf: zipfile.ZipFile, name: str, rows: Iterator[Sequence[Any]]) -> tuple[int, str]:
    digest = hashlib.sha256()
    count = 0
    with zf.open(name, "w") as member:
        for row in rows:
            line = encode_line(row)
            digest.update(line)
            member.write(line)
            count += 1
    return count, digest.hexdigest()


def _export_table(
    zf: zipfile.ZipFile, conn: Connection, table: Table, tenant: Tenant, index: int
) -> TableEntry:
    columns = [c.name for c in table.columns]
    pk = list(table.primary_key.columns) or list(table.columns)
    query = select(table).where(_tenant_filter(table, tenant)).order_by(*pk)
    result = conn.execution_options(yield_per=_BATCH).execute(query)
    name = f"data/{index:03d}_{table.name}.jsonl"
    count, digest = _write_rows(zf, name, iter(result))
    return TableEntry(table.name, name, columns, count, digest)


def _export_jobs(zf: zipfile.ZipFile, conn: Connection, tenant: Tenant) -> TableEntry:
    columns = [c.name for c in jobs_table.columns if c.name != "id"]
    query = (
        select(*(jobs_table.c[c] for c in columns))
        .where(
            jobs_table.c.tenant_id == tenant.id,
            jobs_table.c.state.in_([s.value for s in PENDING_STATES]),
        )
        .order_by(jobs_table.c.id)
    )
    result = conn.execution_options(yield_per=_BATCH).execute(query)
    count, digest = _write_rows(zf, JOBS_FILE, iter(result))
    return TableEntry("tenantry_jobs", JOBS_FILE, columns, count, digest)


# -- reading and verifying ---------------------------------------------------------------
class ExportFile:
    """An export file opened for reading; :meth:`verify` before trusting any of it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except FileNotFoundError:
            raise ExportError(f"{self.path}: no such file") from None
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ExportCorruptError(
                f"{self.path} is not a readable tenantry export (truncated or damaged: {exc})"
            ) from exc
        self.manifest = self._read_manifest()

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> ExportFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _member(self, name: str) -> bytes:
        try:
            return self._zip.read(name)
        except KeyError:
            raise ExportCorruptError(f"{self.path}: {name} is missing") from None
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise ExportCorruptError(f"{self.path}: {name} is damaged ({exc})") from exc

    def _read_manifest(self) -> Manifest:
        body = self._member(MANIFEST)
        expected = self._member(CHECKSUM).decode("ascii", "replace").strip()
        if hashlib.sha256(body).hexdigest() != expected:
            raise ExportChecksumError(
                f"{self.path}: the manifest does not match checksum.sha256; the file was "
                "changed or damaged, nothing was imported"
            )
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise ExportCorruptError(f"{self.path}: manifest.json is not JSON") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ExportFormatError(f"{self.path} is not a tenantry export")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ExportFormatError(
                f"{self.path}: export format version {version!r} is not supported "
                f"(this tenantry reads version {FORMAT_VERSION})"
            )
        try:
            manifest = Manifest(
                tenant=dict(data["tenant"]),
                revision=data["source"]["revision"],
                dialect=str(data["source"]["dialect"]),
                tables=[_entry(t) for t in data["tables"]],
                jobs=_entry(data["jobs"]),
                created_at=str(data["created_at"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ExportFormatError(f"{self.path}: manifest.json is incomplete ({exc})") from exc
        validate_tenant_id(manifest.tenant.get("id"))  # it becomes a schema or file name
        return manifest

    def verify(self) -> None:
        """Read every data file through once: digests and row counts must match the manifest."""
        for entry in [*self.manifest.tables, self.manifest.jobs]:
            digest = hashlib.sha256()
            count = 0
            for line in self._lines(entry):
                digest.update(line)
                count += 1
            if digest.hexdigest() != entry.sha256 or count != entry.rows:
                raise ExportChecksumError(
                    f"{self.path}: {entry.file} does not match its checksum in the manifest "
                    f"({count} rows read, {entry.rows} expected); nothing was imported"
                )

    def _lines(self, entry: TableEntry) -> Iterator[bytes]:
        try:
            with self._zip.open(entry.file) as member:
                yield from member
        except KeyError:
            raise ExportCorruptError(f"{self.path}: {entry.file} is missing") from None
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise ExportCorruptError(f"{self.path}: {entry.file} is damaged ({exc})") from exc

    def rows(self, entry: TableEntry) -> Iterator[dict[str, Any]]:
        for line in self._lines(entry):
            try:
                raw = json.loads(line)
            except ValueError as exc:
                raise ExportCorruptError(
                    f"{self.path}: a line of {entry.file} is not JSON"
                ) from exc
            if not isinstance(raw, list) or len(raw) != len(entry.columns):
                raise ExportCorruptError(f"{self.path}: a row of {entry.file} has the wrong shape")
            yield {c: decode(v) for c, v in zip(entry.columns, raw, strict=True)}


def _entry(raw: Any) -> TableEntry:
    return TableEntry(
        name=str(raw["name"]),
        file=str(raw["file"]),
        columns=[str(c) for c in raw["columns"]],
        rows=int(raw["rows"]),
        sha256=str(raw["sha256"]),
    )


# -- import -------------------------------------------------------------------------
def check_compatible(export: ExportFile, metadata: MetaData, head: str | None) -> list[Table]:
    """The application's tables for the export's, in dependency order; refuses mismatches."""
    manifest = export.manifest
    if manifest.revision != head:
        raise ExportRevisionError(
            f"{export.path} was exported at tenant migration revision "
            f"{manifest.revision or '(none)'}; this application's head is {head or '(none)'}. "
            "Migrate one side first."
        )
    ours = {t.name: t for t in metadata.sorted_tables}
    theirs = {e.name: e for e in manifest.tables}
    unknown = sorted(set(theirs) - set(ours))
    if unknown:
        raise ExportError(f"{export.path}: tables not in this application: {', '.join(unknown)}")
    for name, entry in theirs.items():
        columns = [c.name for c in ours[name].columns]
        if sorted(columns) != sorted(entry.columns):
            raise ExportError(
                f"{export.path}: table {name!r} has columns {entry.columns}, "
                f"this application's has {columns}"
            )
    expected_jobs = sorted(c.name for c in jobs_table.columns if c.name != "id")
    if sorted(manifest.jobs.columns) != expected_jobs:
        raise ExportError(f"{export.path}: the jobs in the file have other columns than ours")
    return [t for t in metadata.sorted_tables if t.name in theirs]


@dataclass(frozen=True)
class ImportResult:
    tenant: Tenant
    rows: dict[str, int]
    jobs: int


def import_tenant(
    tenantry: Tenantry,
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


def load_rows(
    tenantry: Tenantry,
    export: ExportFile,
    tenant: Tenant,
    tables: list[Table],
    *,
    with_jobs: bool = True,
    on_loaded: Callable[[Connection, dict[str, dict[Any, Any]]], None] | None = None,
) -> tuple[dict[str, int], int]:
    """Insert the file's rows (and jobs) into *tenant*'s placement, in one transaction.

    *on_loaded* is called inside that transaction with the renumbered keys
    (per table: exported key to new key), so that a caller can keep them
    atomically with the rows (a move needs them to find the rows again).
    """
    store = tenantry.store(tenant.store)
    engine, dispose = tenant_engine(store, tenant)
    if not store.is_postgres:
        engine = engine.execution_options(sqlite_begin="BEGIN IMMEDIATE")
    entries = {e.name: e for e in export.manifest.tables}
    renumber = tenant.isolation is IsolationMode.SHARED
    counts: dict[str, int] = {}
    try:
        with engine.begin() as conn:
            act_as(conn, tenant.id)
            new_ids: dict[str, dict[Any, Any]] = {}
            for table in tables:
                counts[table.name] = _load_table(
                    conn, export, entries[table.name], table, tenant.id, renumber, new_ids
                )
            jobs = _load_jobs(conn, export, tenant.id) if with_jobs else 0
            if on_loaded is not None:
                on_loaded(conn, new_ids)
    finally:
        if dispose:
            engine.dispose()
    return counts, jobs


def renumbered_key(table: Table) -> str | None:
    """The single integer surrogate key a shared table numbers for all tenants, if any."""
    pk = list(table.primary_key.columns)
    if len(pk) == 1 and isinstance(pk[0].type, Integer) and table.autoincrement_column is pk[0]:
        return pk[0].name
    return None


def _load_table(
    conn: Connection,
    export: ExportFile,
    entry: TableEntry,
    table: Table,
    tenant_id: str,
    renumber: bool,
    new_ids: dict[str, dict[Any, Any]],
) -> int:
    """Insert one table's rows; in shared tables, surrogate keys are renumbered.

    Shared tables hold every tenant's rows under one key sequence, so the
    exported ids may be taken: rows get new ids, and foreign keys to tables
    renumbered before are rewritten. Elsewhere the tenant has the tables to
    itself and ids are kept (sequences are moved past them).
    """
    key = renumbered_key(table) if renumber else None
    refs = [
        (fk.parent.name, fk.column.table.name)
        for fk in table.foreign_keys
        if fk.column.table.name in new_ids and fk.column.primary_key
    ]
    if key is not None and any(fk.column.table is table for fk in table.foreign_keys):
        raise ExportError(
            f"table {table.name!r} refers to itself; importing it into shared tables "
            "(which renumbers its keys) is not supported: import into schema or database mode"
        )
    mapping: dict[Any, Any] = {}
    count = 0
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        if not batch:
            return
        if key is None:
            conn.execute(insert(table), batch)
        else:
            old = [row.pop(key) for row in batch]
            stmt = insert(table).returning(table.c[key], sort_by_parameter_order=True)
            fresh = conn.execute(stmt, batch).scalars().all()
            mapping.update(zip(old, fresh, strict=True))
        batch.clear()

    for row in export.rows(entry):
        row[TENANT_ID_COLUMN] = tenant_id
        for column, referred in refs:
            if row[column] is not None:
                row[column] = new_ids[referred][row[column]]
        batch.append(row)
        count += 1
        if len(batch) >= _BATCH:
            flush()
    flush()
    if key is not None:
        new_ids[table.name] = mapping
    elif conn.dialect.name == "postgresql":
        move_sequences(conn, table)
    return count


def move_sequences(conn: Connection, table: Table) -> None:
    """Let the next default id follow the imported ones (PostgreSQL sequences)."""
    column = table.autoincrement_column
    if column is None:
        return
    schema = conn.get_execution_options().get("schema_translate_map", {}).get(TENANT_SCHEMA)
    name = (
        f"{pg.quote(conn, schema)}.{pg.quote(conn, table.name)}"
        if schema
        else pg.quote(conn, table.name)
    )
    highest = conn.execute(select(func.max(table.c[column.name]))).scalar()
    if highest is None:
        return
    conn.execute(
        text("SELECT setval(pg_get_serial_sequence(:t, :c), :v)"),
        {"t": name, "c": column.name, "v": highest},
    )


def job_for_import(row: dict[str, Any], tenant_id: str) -> dict[str, Any]:
    """An unfinished job as it is inserted elsewhere (changes and returns *row*)."""
    row["tenant_id"] = tenant_id
    if row["state"] == JobState.RUNNING.value:
        row.update(
            state=JobState.AVAILABLE.value,
            lease_expires_at=None,
            lease_token=None,
            worker_id=None,
        )
    return row


def _load_jobs(conn: Connection, export: ExportFile, tenant_id: str) -> int:
    """Unfinished jobs come back in their states; a running one is available again.

    Its worker belongs to the source; the attempt it started stays counted
    (as when a crashed worker's job is rescued), so a poison job still dies.
    """
    count = 0
    batch: list[dict[str, Any]] = []
    for row in export.rows(export.manifest.jobs):
        batch.append(job_for_import(row, tenant_id))
        count += 1
        if len(batch) >= _BATCH:
            conn.execute(insert(jobs_table), batch)
            batch.clear()
    if batch:
        conn.execute(insert(jobs_table), batch)
    return count

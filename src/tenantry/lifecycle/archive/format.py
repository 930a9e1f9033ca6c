"""The export file: a zip archive whose every byte is covered by one chain of digests.

::

    manifest.json        format, format version, tenant, source revision,
                         per table: columns, row count, sha256 of its data file
    data/NNN_<table>.jsonl   one JSON array per row, in the manifest's column order
    jobs.jsonl           the tenant's unfinished jobs
    checksum.sha256      sha256 of manifest.json

Every data file's digest is in the manifest and the manifest's digest is in
``checksum.sha256``, so one chain covers the whole content; zip's own CRCs
catch damage below that. A reader checks all of it, and that every table
and column belongs to this application at the same migration revision,
before anything is changed.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, Table

from tenantry.errors import (
    ExportChecksumError,
    ExportCorruptError,
    ExportError,
    ExportFormatError,
    ExportRevisionError,
)
from tenantry.lifecycle.archive.codec import decode, encode_line
from tenantry.queue.schema import jobs_table
from tenantry.tenancy.ids import validate_tenant_id

FORMAT = "tenantry-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CHECKSUM = "checksum.sha256"
JOBS_FILE = "jobs.jsonl"
#: A job's columns in the file: all but its id, which is numbered per database.
JOB_COLUMNS = tuple(c.name for c in jobs_table.columns if c.name != "id")


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


# -- writing --------------------------------------------------------------------------
def write_rows(zf: zipfile.ZipFile, name: str, rows: Iterator[Sequence[Any]]) -> tuple[int, str]:
    """Stream *rows* into the member *name*; returns its row count and sha256."""
    digest = hashlib.sha256()
    count = 0
    with zf.open(name, "w") as member:
        for row in rows:
            line = encode_line(row)
            digest.update(line)
            member.write(line)
            count += 1
    return count, digest.hexdigest()


def write_manifest(zf: zipfile.ZipFile, manifest: Manifest) -> None:
    """The manifest and its checksum: written last, they seal the archive."""
    body = json.dumps(manifest.to_dict(), indent=2, sort_keys=True).encode()
    zf.writestr(MANIFEST, body)
    zf.writestr(CHECKSUM, hashlib.sha256(body).hexdigest() + "\n")


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
    if sorted(manifest.jobs.columns) != sorted(JOB_COLUMNS):
        raise ExportError(f"{export.path}: the jobs in the file have other columns than ours")
    return [t for t in metadata.sorted_tables if t.name in theirs]

"""Reading the target again before the switch: it must equal the paused source.

Equal maps of key -> hash mean equal row counts and equal contents. The
unfinished jobs (no key in common: they are numbered per database) must
have equal counts and equal digests of what they are.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import Connection, Table, select

from tenantry.errors import MoveError
from tenantry.lifecycle.archive.codec import encode_line
from tenantry.lifecycle.move.copies import engines
from tenantry.lifecycle.move.delta import Synced
from tenantry.lifecycle.move.hashing import (
    Key,
    Shape,
    comparable,
    server_hashes,
    server_hashing,
    shapes,
    target_hashes,
)
from tenantry.lifecycle.move.keys import backwards, read_keys
from tenantry.lifecycle.move.state import Move
from tenantry.lifecycle.rowcopy import KeyMaps
from tenantry.queue.job import PENDING_STATES
from tenantry.queue.schema import jobs_table
from tenantry.tenancy.catalog import Tenant
from tenantry.tenancy.facade import Tenancy
from tenantry.tenancy.models import TENANT_ID_COLUMN

#: Compared between the copies: what a job is, not who is running it.
_JOB_COLUMNS = ("queue", "kind", "payload", "priority", "max_attempts", "idempotency_key")


def digest(conn: Connection, query: Any) -> tuple[int, str]:
    """Row count and sha256 of a query's rows, in an order independent of the database's."""
    lines = sorted(encode_line([comparable(v) for v in row]) for row in conn.execute(query))
    hashed = hashlib.sha256()
    for line in lines:
        hashed.update(line)
    return len(lines), hashed.hexdigest()


def jobs_digest(conn: Connection, tenant_id: str) -> tuple[int, str]:
    query = select(*(jobs_table.c[c] for c in _JOB_COLUMNS)).where(
        jobs_table.c.tenant_id == tenant_id,
        jobs_table.c.state.in_([s.value for s in PENDING_STATES]),
    )
    return digest(conn, query)


def verify(
    tenantry: Tenancy, move: Move, tenant: Tenant, tables: list[Table], synced: Synced
) -> dict[str, int]:
    """Every target row's key and hash must equal the source's; returns rows per table."""
    source_engine, target_engine, dispose = engines(tenantry, move, tenant)
    differ: list[str] = []
    counts: dict[str, int] = {}
    try:
        with source_engine.begin() as src, target_engine.begin() as dst:
            keys = read_keys(dst, tenant.id) if move.renumbers else {}
            by_server = server_hashing(src, dst)
            back = backwards(keys)
            for shape in shapes(tables, move.renumbers):
                name = shape.table.name
                expected = synced.source.get(name, {})
                counts[name], mismatch = _compare(
                    src, dst, shape, tenant.id, back, by_server, expected
                )
                if mismatch:
                    differ.append(f"{name}: {mismatch}")
            ours_jobs, theirs_jobs = jobs_digest(src, tenant.id), jobs_digest(dst, tenant.id)
            if ours_jobs != theirs_jobs:
                differ.append(f"jobs: {ours_jobs[0]} vs {theirs_jobs[0]}")
    finally:
        dispose()
    if differ:
        raise MoveError(
            f"tenant {tenant.id!r}: the copy does not match the original ({', '.join(differ)}); "
            "the catalog still points at the original. Run the move again or abort it."
        )
    return counts


def _compare(
    src: Connection,
    dst: Connection,
    shape: Shape,
    tenant_id: str,
    back: KeyMaps,
    by_server: bool,
    expected: dict[Key, bytes],
) -> tuple[int, str | None]:
    """The target's row count of one table, and how it differs from *expected* (or None)."""
    if shape.key and by_server and not shape.refs:
        found = server_hashes(dst, shape, tenant_id)
        differs = found != expected
        count = len(found)
    elif shape.key:
        theirs, strays = target_hashes(dst, shape, tenant_id, back)
        count = len(theirs) + len(strays)
        found = {k: hashed for k, (hashed, _) in theirs.items()}
        differs = bool(strays) or found != expected
    else:
        query = select(*shape.table.columns).where(shape.table.c[TENANT_ID_COLUMN] == tenant_id)
        ours, theirs_digest = digest(src, query), digest(dst, query)
        if ours != theirs_digest:
            return theirs_digest[0], f"{ours[0]} vs {theirs_digest[0]} rows"
        return theirs_digest[0], None
    return count, f"{len(expected)} vs {count} rows" if differs else None

"""The pause's copy: per table, only the rows that differ between the two copies.

Per table, every row of both copies is reduced to its key and a hash of its
values; rows only in the target are deleted, rows whose hash differs are
updated, rows only in the source are inserted. The unfinished jobs are
copied too. All of it is one target transaction. No triggers are installed:
nothing has to be removed again when a move crashes or is aborted, and it
works the same in every mode and on SQLite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Table, and_, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from tenantry.errors import MoveError
from tenantry.lifecycle.move.copies import engines, provision_target
from tenantry.lifecycle.move.hashing import (
    Key,
    Shape,
    row_hash,
    rows,
    rows_by_key,
    server_hashes,
    server_hashing,
    shapes,
    target_hashes,
)
from tenantry.lifecycle.move.jobs import CopiedJobs, copy_jobs, copy_jobs_by_server
from tenantry.lifecycle.move.keys import (
    backwards,
    drop_keys,
    ensure_keys_table,
    read_keys,
    reset_keys,
    save_keys,
)
from tenantry.lifecycle.move.state import Move
from tenantry.lifecycle.rowcopy import BATCH, KeyMaps, move_sequences
from tenantry.tenancy.catalog import Tenant
from tenantry.tenancy.facade import Tenancy
from tenantry.tenancy.logs import get_logger
from tenantry.tenancy.models import TENANT_ID_COLUMN

log = get_logger(__name__)

#: Per table, the source's rows by key and hash (source terms).
SourceHashes = dict[str, dict[Key, bytes]]


@dataclass(frozen=True)
class TableDelta:
    """What the pause wrote to one table of the target."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0

    @property
    def rows(self) -> int:
        return self.inserted + self.updated + self.deleted


@dataclass(frozen=True)
class Synced:
    delta: dict[str, TableDelta]
    jobs: int
    #: What the target must equal: the verification compares against it.
    source: SourceHashes
    #: Old id to new id of the copied jobs whose id another tenant's job held.
    job_ids: dict[int, int] = field(default_factory=dict)


@dataclass
class _Plan:
    shape: Shape
    #: Keys (target terms) of the target rows to delete.
    gone: list[Key] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)
    new: list[dict[str, Any]] = field(default_factory=list)


def sync(tenantry: Tenancy, move: Move, tenant: Tenant, tables: list[Table]) -> Synced:
    """Make the target equal to the (paused) source, in one target transaction.

    If the rows cannot be written one by one (a unique value moved from one
    row to another, which the per-row updates would collide on), the
    target's rows are cleared and the whole source is copied, still in the
    pause: slower, but always possible.
    """
    provision_target(tenantry, move)
    tenantry.status_changed(move.target(tenant))  # paused beside the jobs to come
    try:
        return _apply(tenantry, move, tenant, tables, reset=False)
    except IntegrityError as exc:
        log.warning(
            "tenant %s: the delta collided in the target (%s); copying all rows in the pause",
            tenant.id,
            exc.orig,
        )
        return _apply(tenantry, move, tenant, tables, reset=True)


def _apply(
    tenantry: Tenancy, move: Move, tenant: Tenant, tables: list[Table], *, reset: bool
) -> Synced:
    found = shapes(tables, move.renumbers)
    source_engine, target_engine, dispose = engines(tenantry, move, tenant)
    try:
        with source_engine.begin() as src, target_engine.begin() as dst:
            keys: KeyMaps = {}
            if move.renumbers:
                ensure_keys_table(dst)
                if reset:
                    reset_keys(dst, tenant.id)
                keys = read_keys(dst, tenant.id)
            if reset:
                for shape in reversed(found):
                    table = shape.table
                    dst.execute(delete(table).where(table.c[TENANT_ID_COLUMN] == tenant.id))
            by_server = server_hashing(src, dst)
            plans, source = _plan(src, dst, found, tenant.id, backwards(keys), by_server)
            for plan in reversed(plans):
                _delete(dst, plan, tenant.id, keys)
            for plan in plans:
                _write(dst, plan, tenant.id, keys)
            if move.shares_jobs:
                copied = CopiedJobs(0)
            elif by_server:
                copied = copy_jobs_by_server(src, dst, tenant.id)
            else:
                copied = copy_jobs(src, dst, tenant.id)
    finally:
        dispose()
    delta = {p.shape.table.name: TableDelta(len(p.new), len(p.changed), len(p.gone)) for p in plans}
    return Synced(delta, copied.count, source, copied.renumbered)


def _plan(
    src: Connection,
    dst: Connection,
    found: list[Shape],
    tenant_id: str,
    back: KeyMaps,
    by_server: bool,
) -> tuple[list[_Plan], SourceHashes]:
    """Per table, what differs; and the source's key -> hash (for the verification)."""
    plans: list[_Plan] = []
    source: SourceHashes = {}
    for shape in found:
        plan = _Plan(shape)
        table = shape.table
        if not shape.key:  # no primary key, no identity to compare by: replaced whole
            have = dst.execute(
                select(func.count()).where(table.c[TENANT_ID_COLUMN] == tenant_id)
            ).scalar_one()
            plan.gone = [()] * have
            plan.new = list(rows(src, table, tenant_id))
            plans.append(plan)
            continue
        if by_server and not shape.refs:
            plans.append(_plan_by_server(src, dst, shape, tenant_id, source))
            continue
        theirs, strays = target_hashes(dst, shape, tenant_id, back)
        ours: dict[Key, bytes] = {}
        for row in rows(src, table, tenant_id):
            key = tuple(row[k] for k in shape.key)
            digest = row_hash([row[c] for c in shape.compared])
            ours[key] = digest
            have_row = theirs.pop(key, None)
            if have_row is None:
                plan.new.append(row)
            elif have_row[0] != digest:
                plan.changed.append(row)
        plan.gone = [*strays, *(target_key for _, target_key in theirs.values())]
        source[table.name] = ours
        plans.append(plan)
    return plans, source


def _plan_by_server(
    src: Connection, dst: Connection, shape: Shape, tenant_id: str, source: SourceHashes
) -> _Plan:
    """Compare keys and server-side hashes; read whole rows only for what differs."""
    theirs = server_hashes(dst, shape, tenant_id)
    ours = server_hashes(src, shape, tenant_id)
    new = [k for k in ours if k not in theirs]
    changed = [k for k, digest in ours.items() if k in theirs and theirs[k] != digest]
    found = rows_by_key(src, shape, tenant_id, [*new, *changed])
    source[shape.table.name] = ours
    return _Plan(
        shape,
        gone=[k for k in theirs if k not in ours],
        changed=[found[k] for k in changed],
        new=[found[k] for k in new],
    )


def _forward(keys: KeyMaps, shape: Shape, row: dict[str, Any]) -> dict[str, Any]:
    """A source row in the target's terms (renumbered foreign keys and own key mapped)."""
    out = dict(row)
    for column, referred in shape.refs:
        value = out[column]
        if value is None or column == shape.renumbered:
            continue
        try:
            out[column] = keys[referred][value]
        except KeyError:
            raise MoveError(
                f"table {shape.table.name!r}: {column}={value!r} refers to a row of "
                f"{referred!r} that the copy does not have"
            ) from None
    return out


def _key_filter(table: Table, columns: list[str]) -> Any:
    return and_(*(table.c[c] == bindparam(f"k_{c}") for c in columns))


def _delete(dst: Connection, plan: _Plan, tenant_id: str, keys: KeyMaps) -> None:
    table = plan.shape.table
    if not plan.gone:
        return
    if not plan.shape.key:
        dst.execute(delete(table).where(table.c[TENANT_ID_COLUMN] == tenant_id))
        return
    params = [{f"k_{c}": v for c, v in zip(plan.shape.key, k, strict=True)} for k in plan.gone]
    stmt = delete(table).where(_key_filter(table, plan.shape.key))
    for start in range(0, len(params), BATCH):
        dst.execute(stmt, params[start : start + BATCH])
    own = plan.shape.renumbered
    if own is not None:
        mapping = keys.get(table.name, {})
        back = {new: old for old, new in mapping.items()}
        olds = [back[k[0]] for k in plan.gone if k[0] in back]
        for old in olds:
            del mapping[old]
        drop_keys(dst, tenant_id, table.name, olds)


def _write(dst: Connection, plan: _Plan, tenant_id: str, keys: KeyMaps) -> None:
    shape = plan.shape
    table = shape.table
    own = shape.renumbered
    if plan.changed:
        _update(dst, plan, keys)
    if not plan.new:
        return
    new_rows = [_forward(keys, shape, row) for row in plan.new]
    for start in range(0, len(new_rows), BATCH):
        batch = new_rows[start : start + BATCH]
        if own is None:
            dst.execute(insert(table), batch)
            continue
        old = [row.pop(own) for row in batch]
        returning = insert(table).returning(table.c[own], sort_by_parameter_order=True)
        fresh = dst.execute(returning, batch).scalars().all()
        added = dict(zip(old, fresh, strict=True))
        keys.setdefault(table.name, {}).update(added)
        save_keys(dst, tenant_id, table.name, added)
    if own is None and dst.dialect.name == "postgresql":
        move_sequences(dst, table)


def _update(dst: Connection, plan: _Plan, keys: KeyMaps) -> None:
    shape = plan.shape
    table = shape.table
    own = shape.renumbered
    values = [c.name for c in table.columns if c.name != own and c.name not in shape.key]
    if not values:
        return
    stmt = (
        update(table)
        .where(_key_filter(table, shape.key))
        .values({c: bindparam(f"v_{c}") for c in values})
    )
    params = []
    for row in plan.changed:
        out = _forward(keys, shape, row)
        key = (keys[table.name][row[own]],) if own else tuple(out[k] for k in shape.key)
        params.append(
            {
                **{f"k_{c}": v for c, v in zip(shape.key, key, strict=True)},
                **{f"v_{c}": out[c] for c in values},
            }
        )
    for start in range(0, len(params), BATCH):
        dst.execute(stmt, params[start : start + BATCH])

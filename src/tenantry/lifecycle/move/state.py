"""The persisted move: the ``tenantry_moves`` row beside the catalog, and its steps.

Each change of step is one catalog transaction together with the tenant
row it goes with, so that the catalog points at exactly one copy of the
tenant at every moment and a crashed move knows where to resume.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import delete, insert, select, update

from tenantry.errors import MoveError, TenantStateError
from tenantry.tenancy.catalog import IsolationMode, Tenant, TenantStatus, moves_table, tenants_table
from tenantry.tenancy.facade import Tenancy
from tenantry.tenancy.isolation import strategy_for

#: The statuses a tenant may be moved from (and is given back at the end).
MOVABLE = (TenantStatus.ACTIVE, TenantStatus.SUSPENDED)


class MoveStep(StrEnum):
    BULK = "bulk"  # served from the old copy; the bulk copy is made
    COPYING = "copying"  # paused; delta, jobs and verification; the catalog is on the old copy
    SWITCHED = "switched"  # the catalog points at the new copy; the old one is removed next


@dataclass(frozen=True)
class Move:
    tenant_id: str
    from_store: str
    from_isolation: IsolationMode
    to_store: str
    to_isolation: IsolationMode
    prior_status: TenantStatus
    step: MoveStep

    @property
    def shares_jobs(self) -> bool:
        """Both copies keep jobs in the same table: the store's, unless one has its own database."""
        return self.from_store == self.to_store and not (
            strategy_for(self.from_isolation).own_database
            or strategy_for(self.to_isolation).own_database
        )

    @property
    def renumbers(self) -> bool:
        """Shared tables number their surrogate keys for all tenants: the copy gets new ones."""
        return strategy_for(self.to_isolation).shares_tables

    def source(self, tenant: Tenant) -> Tenant:
        """*tenant* as placed before the move."""
        return replace(tenant, store=self.from_store, isolation=self.from_isolation)

    def target(self, tenant: Tenant) -> Tenant:
        """*tenant* as placed after the move."""
        return replace(tenant, store=self.to_store, isolation=self.to_isolation)


def read_move(tenantry: Tenancy, tenant_id: str) -> Move | None:
    tenantry.catalog.ensure_schema()
    with tenantry.catalog.engine.connect() as conn:
        row = (
            conn.execute(select(moves_table).where(moves_table.c.tenant_id == tenant_id))
            .mappings()
            .first()
        )
    if row is None:
        return None
    return Move(
        tenant_id=row["tenant_id"],
        from_store=row["from_store"],
        from_isolation=IsolationMode(row["from_isolation"]),
        to_store=row["to_store"],
        to_isolation=IsolationMode(row["to_isolation"]),
        prior_status=TenantStatus(row["prior_status"]),
        step=MoveStep(row["step"]),
    )


def begin(tenantry: Tenancy, tenant: Tenant, to_store: str, mode: IsolationMode) -> Move:
    """Record the move (step ``bulk``); the tenant stays as it is, served from the old copy."""
    now = datetime.now(UTC)
    move = Move(
        tenant.id, tenant.store, tenant.isolation, to_store, mode, tenant.status, MoveStep.BULK
    )
    with tenantry.catalog.engine.begin() as conn:
        current = conn.execute(
            select(tenants_table.c.status).where(tenants_table.c.id == tenant.id)
        ).scalar_one_or_none()
        if current != tenant.status.value:
            raise TenantStateError(f"tenant {tenant.id!r} changed while the move started; retry")
        conn.execute(
            insert(moves_table).values(
                tenant_id=tenant.id,
                from_store=move.from_store,
                from_isolation=move.from_isolation.value,
                to_store=move.to_store,
                to_isolation=move.to_isolation.value,
                prior_status=move.prior_status.value,
                step=move.step.value,
                started_at=now,
                updated_at=now,
            )
        )
    return move


def pause(tenantry: Tenancy, move: Move) -> Move:
    """Status ``moving`` and step ``copying``, in one catalog transaction.

    The status to give back at the end is the one the tenant has now: it may
    have been suspended or resumed while the bulk copy ran.
    """
    now = datetime.now(UTC)
    with tenantry.catalog.engine.begin() as conn:
        current = conn.execute(
            select(tenants_table.c.status).where(tenants_table.c.id == move.tenant_id)
        ).scalar_one_or_none()
        if current not in {s.value for s in MOVABLE}:
            raise MoveError(
                f"tenant {move.tenant_id!r} became {current} during the bulk copy; run the move "
                "again when it is active or suspended (the bulk copy starts over), or abort it"
            )
        changed = conn.execute(
            update(tenants_table)
            .where(tenants_table.c.id == move.tenant_id, tenants_table.c.status == current)
            .values(status=TenantStatus.MOVING.value, updated_at=now)
        ).rowcount
        if changed != 1:
            raise MoveError(f"tenant {move.tenant_id!r} changed while the move paused it; retry")
        conn.execute(
            update(moves_table)
            .where(moves_table.c.tenant_id == move.tenant_id)
            .values(step=MoveStep.COPYING.value, prior_status=current, updated_at=now)
        )
    tenantry.catalog.invalidate(move.tenant_id)
    return replace(move, step=MoveStep.COPYING, prior_status=TenantStatus(current))


def switch(tenantry: Tenancy, move: Move) -> Move:
    """The tenant's store and mode, and the step ``switched``: the new copy is the tenant."""
    now = datetime.now(UTC)
    with tenantry.catalog.engine.begin() as conn:
        changed = conn.execute(
            update(tenants_table)
            .where(
                tenants_table.c.id == move.tenant_id,
                tenants_table.c.status == TenantStatus.MOVING.value,
            )
            .values(store=move.to_store, isolation=move.to_isolation.value, updated_at=now)
        ).rowcount
        if changed != 1:
            raise MoveError(f"tenant {move.tenant_id!r} is no longer moving; the move stopped")
        conn.execute(
            update(moves_table)
            .where(moves_table.c.tenant_id == move.tenant_id)
            .values(step=MoveStep.SWITCHED.value, updated_at=now)
        )
    tenantry.catalog.invalidate(move.tenant_id)
    return replace(move, step=MoveStep.SWITCHED)


def finish(tenantry: Tenancy, move: Move, status: TenantStatus) -> Tenant:
    """The status from before the move back, and the move row gone, in one transaction."""
    now = datetime.now(UTC)
    with tenantry.catalog.engine.begin() as conn:
        conn.execute(
            update(tenants_table)
            .where(tenants_table.c.id == move.tenant_id)
            .values(status=status.value, updated_at=now)
        )
        conn.execute(delete(moves_table).where(moves_table.c.tenant_id == move.tenant_id))
    tenantry.catalog.invalidate(move.tenant_id)
    tenant = tenantry.get_tenant(move.tenant_id)
    tenantry.status_changed(tenant)
    return tenant


def forget(tenantry: Tenancy, move: Move) -> None:
    """The move row gone, the tenant as it is (a move aborted before it paused)."""
    with tenantry.catalog.engine.begin() as conn:
        conn.execute(delete(moves_table).where(moves_table.c.tenant_id == move.tenant_id))

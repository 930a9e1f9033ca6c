"""The step machine of a move: which step runs next, and what a run reports.

Each step persists where it got to (:mod:`~tenantry.lifecycle.move.state`),
so a run that stops anywhere is resumed, or aborted, by running again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tenantry.errors import MoveError, TenantStateError
from tenantry.lifecycle.export import Progress
from tenantry.lifecycle.move import state
from tenantry.lifecycle.move.copies import (
    bulk_copy,
    check_at_head,
    check_same_revision,
    count_rows,
    remove_source,
    remove_target,
)
from tenantry.lifecycle.move.delta import Synced, TableDelta, sync
from tenantry.lifecycle.move.drain import drain
from tenantry.lifecycle.move.lock import exclusive
from tenantry.lifecycle.move.state import MOVABLE, Move, MoveStep
from tenantry.lifecycle.move.verify import verify
from tenantry.tenancy.catalog import IsolationMode, Tenant
from tenantry.tenancy.facade import Tenancy
from tenantry.tenancy.ids import validate_tenant_id
from tenantry.tenancy.isolation import strategy_for
from tenantry.tenancy.logs import get_logger

log = get_logger(__name__)

#: Called with a step's name after it completed (tests stop a move there).
StepHook = Callable[[str], None]

#: The names a :data:`StepHook` is called with, in order.
STEPS = ("started", "bulk-copied", "paused", "delta-copied", "verified", "switched", "cleaned")


@dataclass(frozen=True)
class MoveResult:
    tenant: Tenant
    #: Rows per table of the tenant at the end (the new copy).
    rows: dict[str, int]
    #: Unfinished jobs copied in the pause (0 when both copies share the jobs table).
    jobs: int
    #: From the pause to the end (sessions refused, jobs waiting), in this run.
    pause_seconds: float
    resumed: bool
    aborted: bool = False
    #: The whole run, bulk copy included.
    total_seconds: float = 0.0
    #: Rows copied while the tenant was served (0 if this run resumed in the pause).
    bulk_rows: int = 0
    #: Per table, what the pause changed in the target (the delta).
    delta: dict[str, TableDelta] = field(default_factory=dict)
    #: Old id to new id of the copied jobs whose id another tenant's job holds in the
    #: target's jobs table (empty: every job kept its id).
    job_ids: dict[int, int] = field(default_factory=dict)

    @property
    def delta_rows(self) -> int:
        return sum(d.rows for d in self.delta.values())


def move_tenant(
    tenantry: Tenancy,
    tenant_id: str,
    *,
    to_store: str | None = None,
    isolation: IsolationMode | str | None = None,
    abort: bool = False,
    drain_timeout: float = 60.0,
    after_step: StepHook | None = None,
    progress: Progress | None = None,
) -> MoveResult:
    """Move (or resume moving, or abort moving) *tenant_id* to another store or mode.

    With *progress*, the move reports ``move`` with the steps of :data:`STEPS`
    done so far (of ``len(STEPS)``), and its bulk copy each table as it is
    exported (``export <table>``) and loaded into the target (``load <table>``).
    """
    with exclusive(tenantry.catalog.engine, validate_tenant_id(tenant_id)):
        began = time.monotonic()
        tenant = tenantry.get_tenant(validate_tenant_id(tenant_id))
        move = state.read_move(tenantry, tenant.id)
        resumed = move is not None
        mode = IsolationMode(isolation) if isolation is not None else None
        hook = _reporting(after_step, progress)
        if move is None:
            if abort:
                raise MoveError(f"tenant {tenant.id!r} is not being moved")
            move = _start(tenantry, tenant, to_store, mode)
            hook("started")
        elif (to_store not in (None, move.to_store)) or (mode not in (None, move.to_isolation)):
            raise MoveError(
                f"tenant {tenant.id!r} is being moved to {move.to_isolation.value} on store "
                f"{move.to_store!r}; resume that move (or abort it) first"
            )
        if abort:
            return _abort(tenantry, move, tenant, began)
        return _run(tenantry, move, tenant, _Run(began, resumed, drain_timeout, hook, progress))


def _reporting(after_step: StepHook | None, progress: Progress | None) -> StepHook:
    """The caller's step hook, preceded by a ``move`` progress report of the step."""
    if progress is not None:
        progress("move", 0, len(STEPS))

    def hook(step: str) -> None:
        if progress is not None:
            progress("move", STEPS.index(step) + 1, len(STEPS))
        if after_step is not None:
            after_step(step)

    return hook


@dataclass(frozen=True)
class _Run:
    began: float
    resumed: bool
    drain_timeout: float
    hook: StepHook
    progress: Progress | None = None


def _run(tenantry: Tenancy, move: Move, tenant: Tenant, run: _Run) -> MoveResult:
    """From the move's persisted step to the end."""
    tables = list(tenantry.tenant_metadata.sorted_tables)
    bulk_rows = 0
    paused: float | None = None
    synced = Synced({}, 0, {})
    if move.step is MoveStep.BULK:
        bulk_rows = bulk_copy(tenantry, move, tenant, progress=run.progress)
        log.info("tenant %s: bulk copy of %d row(s) made while served", tenant.id, bulk_rows)
        run.hook("bulk-copied")
        check_same_revision(tenantry, move, tenantry.get_tenant(tenant.id), paused=False)
        move = state.pause(tenantry, move)
        paused = time.monotonic()
        tenantry.status_changed(tenantry.get_tenant(tenant.id))  # beside the old jobs
        run.hook("paused")
    if move.step is MoveStep.COPYING:
        if paused is None:  # resumed in the pause: it has lasted since then
            paused = time.monotonic()
        tenant = tenantry.get_tenant(tenant.id)
        check_same_revision(tenantry, move, tenant, paused=True)
        drain(tenantry, tenant, run.drain_timeout)
        synced = sync(tenantry, move, tenant, tables)
        run.hook("delta-copied")
        rows = verify(tenantry, move, tenant, tables, synced)
        run.hook("verified")
        move = state.switch(tenantry, move)
        run.hook("switched")
    else:
        paused = time.monotonic()
        rows = count_rows(tenantry, move.target(tenant), tables)
    remove_source(tenantry, move, tenant)
    run.hook("cleaned")
    done = state.finish(tenantry, move, move.prior_status)
    end = time.monotonic()
    result = MoveResult(
        done,
        rows,
        synced.jobs,
        end - paused,
        run.resumed,
        total_seconds=end - run.began,
        bulk_rows=bulk_rows,
        delta=synced.delta,
        job_ids=synced.job_ids,
    )
    log.info(
        "moved tenant %s to %s on %s in %.2f s (paused %.2f s, %d row(s) changed in the pause)",
        done.id,
        done.isolation.value,
        done.store,
        result.total_seconds,
        result.pause_seconds,
        result.delta_rows,
    )
    return result


def _start(
    tenantry: Tenancy, tenant: Tenant, to_store: str | None, mode: IsolationMode | None
) -> Move:
    store = tenantry.store(to_store or tenant.store)
    target_mode = mode or tenant.isolation
    if (store.name, target_mode) == (tenant.store, tenant.isolation):
        raise MoveError(
            f"tenant {tenant.id!r} is already {target_mode.value} on store {store.name!r}"
        )
    if tenant.status not in MOVABLE:
        raise TenantStateError(f"tenant {tenant.id!r} is {tenant.status.value}; cannot move it")
    strategy = strategy_for(target_mode)
    strategy.check_supported(store)
    leftover = strategy.leftover(store, tenant.id, tenantry.tenant_metadata)
    if leftover is not None:
        raise MoveError(
            f"cannot move tenant {tenant.id!r}: {leftover} already exists on store "
            f"{store.name!r}; remove it first"
        )
    check_at_head(tenantry, tenant)
    return state.begin(tenantry, tenant, store.name, target_mode)


def _abort(tenantry: Tenancy, move: Move, tenant: Tenant, began: float) -> MoveResult:
    if move.step is MoveStep.SWITCHED:
        raise MoveError(
            f"the move of tenant {tenant.id!r} has switched to the new copy already; "
            "run it again to finish it"
        )
    remove_target(tenantry, move, tenant)
    if move.step is MoveStep.BULK:  # never paused: the tenant keeps the status it has now
        state.forget(tenantry, move)
        done = tenantry.get_tenant(tenant.id)
    else:
        done = state.finish(tenantry, move, move.prior_status)
    log.info("aborted the move of tenant %s; it stays on %s", tenant.id, done.store)
    elapsed = time.monotonic() - began
    pause = 0.0 if move.step is MoveStep.BULK else elapsed
    return MoveResult(done, {}, 0, pause, True, aborted=True, total_seconds=elapsed)

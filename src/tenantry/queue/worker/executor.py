"""Running one job: the tenant check, the handler call, its timeout, its transaction."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from tenantry.errors import (
    DB_ERRORS,
    JobTimeoutError,
    LeaseLostError,
    PayloadValidationError,
    TenantNotFoundError,
    UnknownJobKind,
)
from tenantry.queue.context import JobContext
from tenantry.queue.job import Job, utcnow
from tenantry.queue.registry import Handler
from tenantry.queue.sources import JobSource
from tenantry.queue.worker.observe import COMPLETED, LOST, short_error
from tenantry.queue.worker.state import Held, Runtime
from tenantry.tenancy.catalog import TenantStatus
from tenantry.tenancy.context import tenant_context
from tenantry.tenancy.logs import get_logger, log_fields

if TYPE_CHECKING:
    from tenantry.queue.worker.completer import Completer
    from tenantry.queue.worker.producer import TenantLoads

log = get_logger(__name__)


class _HandlerTimeout(Exception):
    def __init__(self, original: TimeoutError) -> None:
        super().__init__(str(original))
        self.original = original


class Executor:
    """Starts buffered jobs in free slots and runs each inside its tenant's context."""

    def __init__(self, rt: Runtime, completer: Completer, loads: TenantLoads) -> None:
        self._rt = rt
        self._state = rt.state
        self._completer = completer
        self._loads = loads
        self._concurrency = rt.options.concurrency

    def start_buffered(self) -> None:
        state = self._state
        buffer, active = state.buffer, state.active
        report = self._rt.report
        started = 0
        while buffer and state.running < self._concurrency and not state.stopping:
            held = buffer.pop_next(active)
            state.running += 1
            tenant_id = held.job.tenant_id
            active[tenant_id] = active.get(tenant_id, 0) + 1
            report.counters(tenant_id).started += 1
            held.task = asyncio.create_task(self._run_job(held))
            started += 1
        state.prefetch.started(started)

    async def _run_job(self, held: Held) -> None:
        state = self._state
        job = held.job
        try:
            # The tenant id was validated when enqueued. Every record logged for
            # this job, the handler's too, carries its id and kind.
            with tenant_context.trusted(job.tenant_id), log_fields(job_id=job.id, kind=job.kind):
                await self._execute(held)
        except asyncio.CancelledError:
            # Shutdown past the grace period: the drain releases the lease.
            raise
        except Exception as exc:  # a worker must survive anything a job does
            log.exception("internal error running job %s", job.id)
            if state.holds(held) and not held.done:
                # Record it as a failed attempt rather than heartbeat it forever.
                await self._completer.record_failure(held, exc, self._rt.registry.default_retry)
        finally:
            state.running -= 1
            self._loads.started(job.tenant_id)
            left = state.active.get(job.tenant_id, 1) - 1
            if left:
                state.active[job.tenant_id] = left
            else:
                state.active.pop(job.tenant_id, None)
            # The freed slot takes the next buffered job now, not when the
            # claim loop next looks: that may be a whole claim later, and
            # while a claim was under way only the jobs started before it ran.
            self.start_buffered()
            state.wake.set()

    async def _tenant_ready(self, held: Held) -> bool:
        """Re-check the tenant (cached briefly) before running its job.

        A suspended (or provisioning/deleting) tenant's job goes back to wait,
        its attempt not spent; a job whose tenant is gone is dead with a reason.
        """
        job = held.job
        catalog = self._rt.tenancy.catalog
        if catalog.status_cached(job.tenant_id) is TenantStatus.ACTIVE:
            return True
        tenant = catalog.get_cached(job.tenant_id)
        if tenant is None:
            try:
                tenant = await self._rt.threads.offload(catalog.get, job.tenant_id)
            except TenantNotFoundError as exc:
                gone = TenantNotFoundError(f"tenant {job.tenant_id!r} no longer exists: {exc}")
                await self._completer.record_failure(
                    held, gone, self._rt.registry.default_retry, dead=True
                )
                return False
            except DB_ERRORS as exc:
                # The catalog is unreachable: not the job's fault. Hand it back.
                log.warning(
                    "job %s: catalog lookup failed (%s); releasing it", job.id, short_error(exc)
                )
                await self._completer.release([held])
                return False
        if tenant.status is TenantStatus.ACTIVE:
            return True
        until = utcnow() + timedelta(seconds=self._rt.options.suspended_retry)
        await self._completer.postpone(held, until)
        log.info("job %s waits: tenant %s is %s", job.id, job.tenant_id, tenant.status.value)
        return False

    async def _execute(self, held: Held) -> None:
        job, source = held.job, held.source
        state, report, registry = self._state, self._rt.report, self._rt.registry
        if not await self._tenant_ready(held):
            return
        try:
            handler = registry.get(job.kind)
            payload = handler.validate_job(job)
        except (UnknownJobKind, PayloadValidationError) as exc:
            # A poison message: retrying cannot help, so it is dead at once.
            log.error("job %s (%s) is dead at once: %s", job.id, job.kind, exc)
            await self._completer.record_failure(held, exc, registry.default_retry, dead=True)
            return
        ctx = JobContext(
            job=job, tenantry=self._rt.tenancy, worker_id=self._rt.worker_id, logger=log
        )
        held.ctx = ctx
        started = time.perf_counter()
        try:
            await self._call(handler, ctx, payload, source)
        except LeaseLostError as exc:
            report.observe("handler_finished", job, time.perf_counter() - started, exc)
            state.forget(held)
            report.outcome(job, LOST)
            log.warning("job %s: %s", job.id, exc)
            return
        except Exception as exc:  # handler failures (and JobTimeoutError) are data
            report.observe("handler_finished", job, time.perf_counter() - started, exc)
            await self._completer.record_failure(held, exc, handler.retry)
            return
        report.observe("handler_finished", job, time.perf_counter() - started, None)
        if handler.transactional:
            state.forget(held)
            report.outcome(job, COMPLETED)
        elif state.holds(held):  # not abandoned meanwhile (Leases.abandon)
            self._completer.finished(held)

    async def _call(
        self, handler: Handler, ctx: JobContext, payload: Any, source: JobSource
    ) -> None:
        in_thread = self._rt.threads.in_thread
        if handler.transactional:
            call: Awaitable[None] = (
                self._atransactional(handler, ctx, payload, source)
                if handler.is_async
                else in_thread(self._transactional_sync, handler, ctx, payload, source)
            )
        elif handler.is_async:
            call = handler.fn(ctx, payload)
        else:
            call = in_thread(handler.fn, ctx, payload)
        if handler.timeout is None:
            await call
            return

        async def guarded() -> None:
            # Set apart a TimeoutError the handler raises itself from wait_for's own.
            try:
                await call
            except TimeoutError as exc:
                raise _HandlerTimeout(exc) from exc

        try:
            await asyncio.wait_for(guarded(), handler.timeout)
        except TimeoutError:
            raise JobTimeoutError(
                f"job {ctx.job.id} ({ctx.job.kind}) exceeded its timeout of {handler.timeout:g}s"
            ) from None
        except _HandlerTimeout as wrapped:
            raise wrapped.original from None

    def _transactional_sync(
        self, handler: Handler, ctx: JobContext, payload: Any, source: JobSource
    ) -> None:
        with self._rt.tenancy.session() as session, session.begin():
            ctx.session = session
            handler.fn(ctx, payload)
            complete_in(session.connection(), source, ctx.job)

    async def _atransactional(
        self, handler: Handler, ctx: JobContext, payload: Any, source: JobSource
    ) -> None:
        async with self._rt.tenancy.async_session() as session, session.begin():
            ctx.session = session
            await handler.fn(ctx, payload)
            await session.run_sync(lambda s: complete_in(s.connection(), source, ctx.job))


def complete_in(conn: Connection, source: JobSource, job: Job) -> None:
    """Mark the job completed inside the handler's own transaction, or void it."""
    done = source.driver.complete(conn, [(job.id, job.lease_token or "")])
    if job.id not in done:
        raise LeaseLostError(
            f"job {job.id}: lease lost before commit; the handler's writes were rolled back"
        )

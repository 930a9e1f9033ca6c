"""Writing outcomes: batched acknowledgements, failures, releases and postponements.

Every outcome is fenced on the job's lease token and ``state = 'running'``: a
worker whose lease was taken over (it stalled, or was presumed dead) cannot
overwrite the newer attempt.
"""

from __future__ import annotations

import asyncio
import traceback
from datetime import datetime, timedelta

from tenantry.backoff import ExponentialBackoff
from tenantry.errors import DB_ERRORS
from tenantry.queue.job import utcnow
from tenantry.queue.retry import RetryPolicy
from tenantry.queue.worker.observe import COMPLETED, DEAD, LOST, RETRIED, short_error
from tenantry.queue.worker.state import Held, Runtime
from tenantry.tenancy.logs import get_logger

log = get_logger(__name__)

#: Longest an acknowledgement waits for a claim to carry it (see Completer.run).
ACK_MAX_DELAY = 0.05
#: Attempts at recording a failed attempt before the lease is left to expire.
FAILURE_WRITES = 5


class Completer:
    """Acknowledges finished jobs in batches and records every other outcome."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._state = rt.state
        # Failed writes of a failed attempt, retried on this schedule.
        self._failure_retry = ExponentialBackoff(0.2, 30.0)
        # Acknowledgements that could not be written wait longer each time,
        # while claims keep carrying them whenever their source answers.
        self._ack_retry = ExponentialBackoff(0.5, 5.0)

    def finished(self, held: Held) -> None:
        """A handler returned: acknowledge the job with others, soon.

        ``done`` also tells the heartbeat that this worker is completing the
        job: a renewal that no longer matches its row (the acknowledgement
        committed first) does not make it lost; the acknowledgement's own
        fencing decides that.
        """
        state = self._state
        held.done = True
        state.to_complete.setdefault(held.source.key, []).append(held)
        state.ack.set()

    async def run(self) -> None:
        """Acknowledge finished jobs that no claim has carried along.

        While the queue is busy, acknowledgements ride on the next claim's
        transaction; this loop catches the rest after a short delay, so an idle
        worker still records completions within milliseconds. Writes that fail
        are retried after a growing delay, outside the flush lock, so a stop
        never waits behind a database that is away.
        """
        state = self._state
        ack_delay = self._rt.options.ack_delay
        while True:
            await state.ack.wait()
            state.ack.clear()
            await asyncio.sleep(ack_delay)
            # While jobs are in flight, a claim comes as soon as enough slots
            # are free and carries the acknowledgements in its transaction: a
            # separate one here would cost a commit for little. Wait for it,
            # up to ACK_MAX_DELAY; an idle worker acknowledges at once.
            waited = ack_delay
            while (
                state.to_complete
                and not state.stopping
                and waited < ACK_MAX_DELAY
                and (state.running or state.buffer or state.claiming)
            ):
                await asyncio.sleep(ack_delay)
                waited += ack_delay
            if not state.to_complete:
                continue
            if await self.flush():
                self._ack_retry.ok()
            else:
                await asyncio.sleep(self._ack_retry.failed())
                state.ack.set()

    async def flush(self, *, final: bool = False) -> bool:
        """One pass over the pending acknowledgements; False if some stay pending."""
        async with self._state.flush_lock:
            return await self._flush_locked(final=final)

    async def _flush_locked(self, *, final: bool) -> bool:
        state = self._state
        batch = self._rt.options.completion_batch
        pending, state.to_complete = state.to_complete, {}
        retry: dict[str, list[Held]] = {}
        for key, items in pending.items():
            for start in range(0, len(items), batch):
                chunk = items[start : start + batch]
                if not await self._complete_chunk(chunk):
                    retry.setdefault(key, []).extend(chunk)
        if not retry:
            return True
        if final:
            log.error(
                "%d completion(s) could not be written; those jobs will be rescued "
                "and may run again",
                sum(len(v) for v in retry.values()),
            )
            return False
        for key, items in retry.items():
            state.to_complete.setdefault(key, [])[:0] = items
        return False

    async def _complete_chunk(self, chunk: list[Held]) -> bool:
        source = chunk[0].source
        leases = [(h.job.id, h.job.lease_token or "") for h in chunk]
        try:
            async with source.async_engine().begin() as conn:
                done = await conn.run_sync(source.driver.complete, leases)
        except DB_ERRORS as exc:
            log.warning(
                "acknowledging %d job(s) on %s failed: %s", len(chunk), source.key, short_error(exc)
            )
            return False
        self.acknowledged(chunk, done)
        return True

    def acknowledged(self, items: list[Held], done: set[int]) -> None:
        """Count acknowledgements written (by a claim or a flush): *done* were still ours."""
        if not items:
            return
        forget, outcome = self._state.forget, self._rt.report.outcome
        for held in items:
            forget(held)
            if held.job.id in done:
                outcome(held.job, COMPLETED)
            else:
                outcome(held.job, LOST)
                log.warning("job %s finished but its lease had been taken over", held.job.id)
        self._rt.report.signals.acknowledged.bump(len(items))

    async def record_failure(
        self, held: Held, exc: BaseException, policy: RetryPolicy, *, dead: bool = False
    ) -> None:
        state, report = self._state, self._rt.report
        job, source = held.job, held.source
        dead = dead or job.attempt >= job.max_attempts
        retry_at = None if dead else utcnow() + timedelta(seconds=policy.delay(job.attempt))
        error = {
            "at": utcnow().isoformat(),
            "attempt": job.attempt,
            "type": type(exc).__name__,
            # jsonb holds no NUL (a message quoting binary data may have one).
            "message": str(exc)[:2000].replace("\x00", "\\x00"),
            "traceback": "".join(traceback.format_exception(exc))[-8000:].replace("\x00", "\\x00"),
        }
        for attempt in range(FAILURE_WRITES):
            try:
                async with source.async_engine().begin() as conn:
                    ok = await conn.run_sync(
                        lambda c: source.driver.fail(c, job, error, retry_at=retry_at, dead=dead)
                    )
                break
            except DB_ERRORS as db_exc:
                if attempt == FAILURE_WRITES - 1 or state.hard_stop:
                    log.error(
                        "could not record failure of job %s (%s); its lease will expire "
                        "and it will be rescued",
                        job.id,
                        short_error(db_exc),
                    )
                    state.forget(held)
                    return
                await asyncio.sleep(self._failure_retry.delay(attempt))
        state.forget(held)
        if not ok:
            report.outcome(job, LOST)
            log.warning("job %s: lease lost before its failure could be recorded", job.id)
        elif dead:
            report.outcome(job, DEAD)
            log.error(
                "job %s (%s) is dead after attempt %d: %s", job.id, job.kind, job.attempt, exc
            )
        else:
            report.outcome(job, RETRIED)
            log.warning(
                "job %s (%s) failed attempt %d/%d, retry at %s: %s",
                job.id,
                job.kind,
                job.attempt,
                job.max_attempts,
                retry_at.isoformat() if retry_at else "-",
                exc,
            )

    async def postpone(self, held: Held, until: datetime) -> None:
        """Put a claimed job back until *until*, its attempt not spent (tenant not active)."""
        job, source = held.job, held.source
        # Dropped first, as in release: this worker gives the job up either way,
        # and a heartbeat between the commit and a later forget would find the
        # row no longer running under its lease and report a lost lease.
        self._state.forget(held)
        try:
            async with source.async_engine().begin() as conn:
                await conn.run_sync(source.driver.postpone, job, until)
        except DB_ERRORS as exc:
            log.warning("could not postpone job %s: %s", job.id, short_error(exc))
        self._rt.report.stats.postponed += 1

    async def release(self, items: list[Held]) -> None:
        """Hand claimed jobs back for other workers, their attempt not spent."""
        by_source: dict[str, list[Held]] = {}
        for held in items:
            by_source.setdefault(held.source.key, []).append(held)
        for group in by_source.values():
            source = group[0].source
            leases = [(h.job.id, h.job.lease_token or "") for h in group]
            # Whatever happens below, this worker stops holding them: were they
            # kept, the heartbeat would renew leases for jobs nothing runs.
            for held in group:
                self._state.forget(held)
            try:
                async with source.async_engine().begin() as conn:
                    released = await conn.run_sync(source.driver.release, leases)
            except DB_ERRORS as exc:
                log.error(
                    "could not release %d job(s) on %s (%s); they return when their lease expires",
                    len(group),
                    source.key,
                    short_error(exc),
                )
                continue
            self._rt.report.stats.released += len(released)
            if released:
                log.info("released %d job(s) on %s for other workers", len(released), source.key)

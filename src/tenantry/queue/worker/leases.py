"""Leases: renew those of every job held, and give up those that are lost.

A renewal that does not match a job's row means the lease is gone, except when
this worker itself just wrote the job's outcome: the row is then completed (or
failed) before the job leaves the set of jobs held, and renewals run meanwhile.
Those jobs are not lost, and are not reported as such (see ``Leases.renew``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sqlalchemy import Connection, select

from tenantry.errors import DB_ERRORS
from tenantry.queue.job import JobState
from tenantry.queue.schema import jobs_table as J
from tenantry.queue.worker.observe import short_error
from tenantry.queue.worker.state import Held, Runtime
from tenantry.tenancy.logs import get_logger

log = get_logger(__name__)

#: States a worker's own outcome leaves a job in, with its ``worker_id`` kept.
OWN_OUTCOMES = (JobState.COMPLETED.value, JobState.RETRYABLE.value, JobState.DEAD.value)


def settled_here(conn: Connection, items: Sequence[Held], worker_id: str) -> set[int]:
    """The ids among *items* whose outcome this worker wrote, under the attempt it holds.

    Completion and failure keep ``worker_id`` and ``attempt``; rescue, cancel
    and release change one or the other (or finish the row as ``cancelled``),
    and a later claim raises the attempt. So a row finished by this worker at
    the held attempt was finished by this claim, not taken over.
    """
    attempts = {h.job.id: h.job.attempt for h in items}
    rows = conn.execute(
        select(J.c.id, J.c.attempt).where(
            J.c.id.in_(list(attempts)),
            J.c.worker_id == worker_id,
            J.c.state.in_(OWN_OUTCOMES),
        )
    )
    return {int(job_id) for job_id, attempt in rows if attempts.get(int(job_id)) == attempt}


class Leases:
    """The heartbeat, and what happens to a job whose lease is gone."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._state = rt.state
        options = rt.options
        self.interval = options.heartbeat_interval or options.lease_seconds / 3

    async def heartbeat(self) -> None:
        """Renew every ``interval`` seconds, for as long as the worker runs."""
        while True:
            await asyncio.sleep(self.interval)
            await self.renew()

    async def renew(self) -> None:
        """Extend the leases of every job held, one transaction per source.

        A job whose row the renewal does not match is lost, unless this worker
        wrote its outcome itself, or is writing it:

        - a job whose handler returned (``done``) is being acknowledged: the
          acknowledgement's own fencing says whether it was still ours, and
          counts it lost if not;
        - a job whose completion (a transactional handler's) or failure was
          committed but is still held is found by :func:`settled_here`, in the
          same transaction, so after any commit the renewal missed;
        - a row being written at this moment is locked, and the driver's
          renewal skips it and counts it held.
        """
        state, rt = self._state, self._rt
        by_source: dict[str, list[Held]] = {}
        for held in list(state.held.values()):
            by_source.setdefault(held.source.key, []).append(held)
        for items in by_source.values():
            source = items[0].source
            leases = [(h.job.id, h.job.lease_token or "") for h in items]
            try:
                async with source.async_engine().begin() as conn:
                    kept = await conn.run_sync(
                        source.driver.extend, leases, rt.options.lease_seconds
                    )
                    unsure = [h for h in items if h.job.id not in kept and not h.done]
                    if unsure:
                        kept |= await conn.run_sync(settled_here, unsure, rt.worker_id)
            except DB_ERRORS as exc:
                log.warning("heartbeat on %s failed: %s", source.key, short_error(exc))
                continue
            for held in items:
                # Re-read after the awaits: the handler may have returned, or
                # the job been dropped (or claimed afresh under a new Held).
                if held.job.id in kept or held.done:
                    continue
                if state.held.get((source.key, held.job.id)) is held:
                    self.lost(held)

    def abandon(self, key: str) -> None:
        """Give up the jobs of a source that is gone (its tenant database was dropped).

        Their rows went with the database: nothing can be acknowledged or
        heartbeated there any more, so running handlers learn their outcome is
        void and pending acknowledgements are dropped instead of retried forever.
        """
        state, stats = self._state, self._rt.report.stats
        dropped = state.to_complete.pop(key, [])
        for held in dropped:
            state.forget(held)
        stats.lost += len(dropped)
        for held in [h for h in state.held.values() if h.source.key == key]:
            self.lost(held)
            if held in state.held.values():
                state.forget(held)
                stats.lost += 1

    def lost(self, held: Held) -> None:
        """The job was cancelled or taken over: do not start it; tell a running handler."""
        if self._state.buffer.remove(held):
            self._state.forget(held)
            log.info("job %s was cancelled or taken over before it started", held.job.id)
            return
        if held.ctx is not None:
            held.ctx.lease_lost = True
        log.warning("job %s lost its lease (cancelled or taken over)", held.job.id)

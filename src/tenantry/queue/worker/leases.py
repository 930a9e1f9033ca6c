"""Leases: renew those of every job held, and give up those that are lost."""

from __future__ import annotations

import asyncio

from tenantry.errors import DB_ERRORS
from tenantry.queue.worker.observe import short_error
from tenantry.queue.worker.state import Held, Runtime
from tenantry.tenancy.logs import get_logger

log = get_logger(__name__)


class Leases:
    """The heartbeat, and what happens to a job whose lease is gone."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._state = rt.state
        options = rt.options
        self.interval = options.heartbeat_interval or options.lease_seconds / 3

    async def heartbeat(self) -> None:
        """Extend the leases of every job held, one statement per source."""
        state = self._state
        lease_seconds = self._rt.options.lease_seconds
        while True:
            await asyncio.sleep(self.interval)
            by_source: dict[str, list[Held]] = {}
            for held in list(state.held.values()):
                by_source.setdefault(held.source.key, []).append(held)
            for items in by_source.values():
                source = items[0].source
                leases = [(h.job.id, h.job.lease_token or "") for h in items]
                try:
                    async with source.async_engine().begin() as conn:
                        kept = await conn.run_sync(source.driver.extend, leases, lease_seconds)
                except DB_ERRORS as exc:
                    log.warning("heartbeat on %s failed: %s", source.key, short_error(exc))
                    continue
                for held in items:
                    if held.job.id not in kept and state.holds(held):
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

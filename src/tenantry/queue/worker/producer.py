"""The claim loop: fills free slots and the prefetch buffer, fairly, from every source.

A round asks as many sources as keep claims at a useful size, weighed like
tenants (``fairness.shares``); the rotation and the load bring the others
their turn. A claim also carries the acknowledgements waiting for its
source, so a busy worker commits once per batch, not once per job.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine

from tenantry.errors import DB_ERRORS
from tenantry.queue.drivers import ClaimRequest
from tenantry.queue.fairness import (
    FAIR_WINDOW,
    Contender,
    DecayingCounts,
    next_after,
    shares,
    virtual_key,
)
from tenantry.queue.job import Job
from tenantry.queue.sources import JobSource
from tenantry.queue.worker.observe import ErrorLog, short_error
from tenantry.queue.worker.state import Held, Runtime
from tenantry.tenancy.logs import get_logger

if TYPE_CHECKING:
    from tenantry.queue.worker.catalog_sync import CatalogSync
    from tenantry.queue.worker.completer import Completer
    from tenantry.queue.worker.executor import Executor

log = get_logger(__name__)

#: Half-life (seconds) of the recent starts that count towards a tenant's load.
LOAD_HALF_LIFE = 2.0
#: While places are free, claims come at least this often (see Producer.run).
CLAIM_INTERVAL = 0.02
#: At most this many tenants' loads go into a claim statement.
MAX_HELD_IN_CLAIM = 512
#: Below this (half a job) a tenant's load orders like an idle tenant's.
HEAVY_LOAD = 0.5
#: How long a ranking of more than MAX_HELD_IN_CLAIM tenants' recent starts is reused.
RANK_REFRESH = 0.25


class TenantLoads:
    """Each tenant's load in this worker: jobs held now plus recent starts, decaying.

    The fair order needs memory: a one-slot worker running transactional
    jobs holds nothing between jobs, and without the recent starts every
    tenant would tie at every claim. Starts decay with a half-life of
    ``LOAD_HALF_LIFE`` seconds.
    """

    def __init__(self, held: Mapping[tuple[str, int], Held]) -> None:
        self._held = held
        self._recent = DecayingCounts(LOAD_HALF_LIFE, time.monotonic())  # starts per tenant
        self._ranked: dict[str, float] = {}  # see heavy_loads
        self._ranked_until = 0.0

    def started(self, tenant_id: str) -> None:
        self._recent.add(tenant_id, time.monotonic())

    def loads(self, now: float) -> dict[str, float]:
        loads = self._recent.values(now)
        for item in self._held.values():
            loads[item.job.tenant_id] = loads.get(item.job.tenant_id, 0.0) + 1.0
        return loads

    def heavy_loads(self, now: float) -> dict[str, float]:
        """``loads`` of the tenants whose load is at least ``HEAVY_LOAD``.

        ``heaviest`` of this equals ``heaviest`` of every load: a tenant
        left out has fewer recent starts than that and holds no job here.

        Only when more tenants than a claim takes (``MAX_HELD_IN_CLAIM``) have
        heavy recent starts, where the claim already keeps only the heaviest,
        is that ranking of recent starts reused for ``RANK_REFRESH`` seconds:
        ranking ten thousand tenants per claim dominated the event loop
        (measured: see docs/performance.md). Jobs held now are always counted
        as they are.
        """
        if now < self._ranked_until:
            loads = dict(self._ranked)
        else:
            loads = self._recent.heavy(now, HEAVY_LOAD)
            if len(loads) > MAX_HELD_IN_CLAIM:
                self._ranked = heaviest(loads)
                self._ranked_until = now + RANK_REFRESH
                loads = dict(self._ranked)
        for item in self._held.values():
            tenant_id = item.job.tenant_id
            if tenant_id not in loads:
                loads[tenant_id] = self._recent.value(tenant_id, now)
            loads[tenant_id] += 1.0
        return loads


def heaviest(loads: dict[str, float]) -> dict[str, float]:
    """The loads worth sending: a tenant whose decayed load is below half a job
    orders like an idle one, and with ten thousand tenants started recently
    the whole map would be arrays of ten thousand values in every claim."""
    if len(loads) <= MAX_HELD_IN_CLAIM:
        return {t: v for t, v in loads.items() if v >= HEAVY_LOAD}
    # The cut from the loads alone, sorted in C: faster than ranking
    # (load, tenant) pairs with nlargest over ten thousand tenants.
    cut = max(HEAVY_LOAD, sorted(loads.values(), reverse=True)[MAX_HELD_IN_CLAIM - 1])
    kept = {t: v for t, v in loads.items() if v >= cut}
    if len(kept) > MAX_HELD_IN_CLAIM:  # ties at the cut
        kept = dict(heapq.nlargest(MAX_HELD_IN_CLAIM, kept.items(), key=lambda kv: kv[1]))
    return kept


class Producer:
    """Claims jobs into the buffer, as many as free slots and the prefetch allow."""

    def __init__(
        self,
        rt: Runtime,
        catalog: CatalogSync,
        executor: Executor,
        completer: Completer,
        loads: TenantLoads,
    ) -> None:
        self._rt = rt
        self._state = rt.state
        self._catalog = catalog
        self._executor = executor
        self._completer = completer
        self._loads = loads
        self._rotation = 0
        self._claim_engines: dict[str, Engine] = {}
        self._after: dict[str, str] = {}  # source key -> where its next fair window starts
        self._errors = ErrorLog(log)

    def forget_source(self, key: str) -> None:
        """A source is gone: drop what the claims kept for it."""
        self._state.idle.pop(key, None)
        self._claim_engines.pop(key, None)

    async def run(self) -> None:
        state = self._state
        options = self._rt.options
        concurrency = options.concurrency
        start_buffered = self._executor.start_buffered
        last_claim = 0.0
        while not state.stopping:
            state.wake.clear()
            start_buffered()
            now = time.monotonic()
            capacity = concurrency + state.prefetch.value(now)
            # Claim in batches: each claim is a commit, so topping up one job
            # at a time would cost a round trip (and an fsync) per job. But
            # not rarer than every CLAIM_INTERVAL while places are free: a
            # deep buffer of one tenant's jobs must not keep another tenant's
            # new job waiting until half of it has drained.
            min_batch = max(1, capacity // 2)
            want = capacity - state.running - len(state.buffer)
            stale = now - last_claim >= CLAIM_INTERVAL
            got = 0
            if want >= min_batch or (want > 0 and (not state.buffer or stale)):
                last_claim = now
                state.claiming = True
                try:
                    got = await self._claim_round(want)
                finally:
                    state.claiming = False
                start_buffered()
            if got and got >= want:
                continue  # there may be more: claim again as soon as slots allow
            if state.stopping:
                break
            timeout = options.poll_interval
            if 0 < want < min_batch:
                timeout = min(timeout, max(0.001, last_claim + CLAIM_INTERVAL - now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.wake.wait(), timeout)

    async def _claim_round(self, want: int) -> int:
        """Claim up to *want* jobs, shared fairly between the sources that may have some.

        Sources are weighed like tenants (``fairness.shares``): a tenant
        database by its tenant's weight and this worker's recent load for it,
        a store database by the tenants of it this worker is busy with. A
        round asks only as many sources as keep claims at a useful size (not
        one job from each of a hundred databases); the rotation and the load
        bring the others their turn. What a source could not use goes to those
        that filled their share. A database that had nothing is polled again
        after a growing interval (up to ``idle_poll_max``) unless a wake-up
        names it, so a thousand idle tenant databases cost little.
        """
        state = self._state
        sources = state.sources
        if not sources:
            return 0
        now = time.monotonic()
        n = len(sources)
        start = self._rotation % n
        self._rotation += 1
        backoff, idle = state.source_backoff, state.idle
        due = [
            s
            for s in (sources[(start + i) % n] for i in range(n))
            if backoff.ready(s.key) and idle.get(s.key, (0.0, 0.0))[0] <= now
        ]
        if not due:
            return 0
        signal = self._rt.report.signals.claim_rounds
        if len(due) == 1:  # nothing to weigh
            only = due[0]
            # A store database's claim reads only the heaviest loads (``heaviest``):
            # gathered directly, not from every tenant seen in the last minute.
            loads = (
                self._loads.heavy_loads(now) if only.tenant_id is None else self._loads.loads(now)
            )
            got = await self._claim_into(only, want, loads)
            self._rt.report.stats.claimed += got
            signal.bump()
            return got
        loads = self._loads.loads(now)
        base = datetime(2000, 1, 1, tzinfo=UTC)
        contenders = []
        for order, source in enumerate(due):
            weight, load = self._source_weight_and_load(source, loads)
            contenders.append(
                Contender(
                    tenant_id=source.key,
                    weight=weight,
                    running=load,
                    allowance=want,
                    head=base + timedelta(seconds=order),  # ties: the rotation's order
                )
            )
        min_share = max(1, min(want, self._rt.options.concurrency // 2))
        contenders.sort(key=lambda c: (virtual_key(c.running, 1, c.weight), c.head))
        picked = contenders[: max(1, want // min_share)]
        plan = shares(picked, want)
        by_key = {s.key: s for s in due}
        total = 0
        full: list[JobSource] = []
        for c in picked:
            asked = min(plan.get(c.tenant_id, 0), want - total)
            if asked <= 0 or state.stopping:
                continue
            source = by_key[c.tenant_id]
            got = await self._claim_into(source, asked, loads)
            total += got
            if got >= asked:
                full.append(source)
        # Leftovers: first to sources that filled their share, then down the
        # order to those not asked yet (a picked source may have had nothing).
        rest = [by_key[c.tenant_id] for c in contenders[len(picked) :]]
        for source in [*full, *rest]:
            if total >= want or state.stopping:
                break
            # A source may be asked again: its jobs claimed above count now.
            total += await self._claim_into(
                source, want - total, self._loads.loads(time.monotonic())
            )
        self._rt.report.stats.claimed += total
        signal.bump()
        return total

    def _source_weight_and_load(
        self, source: JobSource, loads: dict[str, float]
    ) -> tuple[int, float]:
        weights = self._catalog.weights
        if source.tenant_id is not None:
            return weights.get(source.tenant_id, 1), loads.get(source.tenant_id, 0.0)
        members = self._catalog.source_members.get(source.key, frozenset())
        busy = [t for t, load in loads.items() if load > 0 and t in members]
        weight = sum(weights.get(t, 1) for t in busy)
        return max(1, weight), sum(loads[t] for t in busy)

    async def _claim_into(self, source: JobSource, limit: int, loads: dict[str, float]) -> int:
        state, options = self._state, self._rt.options
        started = time.perf_counter()
        try:
            jobs = await self._claim(source, limit, loads)
        except DB_ERRORS as exc:
            delay = state.source_backoff.failed(source.key)
            log.warning(
                "claim from %s failed (%s); retrying in %.1fs", source.key, short_error(exc), delay
            )
            return 0
        seconds = time.perf_counter() - started
        state.prefetch.claimed(seconds)
        self._rt.report.observe("claimed", jobs, seconds)
        if state.source_backoff.ok(source.key):
            log.info("source %s is reachable again", source.key)
        if jobs:
            state.idle.pop(source.key, None)
        else:
            # Nothing there: leave it out of the next rounds until a wake-up
            # names it or its poll comes (a store database every
            # poll_interval; a tenant database after a growing interval).
            poll = options.poll_interval
            longest = options.idle_poll_max if source.tenant_id is not None else poll
            interval = state.idle.get(source.key, (0.0, poll / 2))[1]
            interval = min(longest, max(poll, interval * 2))
            state.idle[source.key] = (time.monotonic() + interval, interval)
        catalog = self._rt.tenancy.catalog
        missing = {j.tenant_id for j in jobs if catalog.status_cached(j.tenant_id) is None}
        if missing:
            # One catalog query for the batch's tenants the cache lacks, not
            # one per job when it starts (Executor's tenant check).
            try:
                await self._rt.threads.offload(catalog.warm, missing)
            except DB_ERRORS as exc:
                # Not fatal: each job looks its tenant up when it starts.
                self._errors.failed("catalog warm-up", source.key, exc)
        held_jobs = state.held
        buffer = state.buffer
        for job in jobs:
            held = Held(source, job)
            held_jobs[(source.key, job.id)] = held
            buffer.append(held)
        return len(jobs)

    async def _claim(self, source: JobSource, limit: int, loads: dict[str, float]) -> list[Job]:
        """Acknowledge this source's finished jobs and claim new ones in one transaction.

        The one place the worker claims: every call into the driver's claim
        path goes through here.
        """
        state, options = self._state, self._rt.options
        # A store's engine is long-lived; a tenant database's comes from the
        # store's bounded LRU each time, so the connection count stays bounded.
        engine = self._claim_engines.get(source.key)
        if engine is None:
            engine = source.claim_engine()
            if source.tenant_id is None:
                self._claim_engines[source.key] = engine
        driver = source.driver
        acks = state.to_complete.pop(source.key, [])
        leases = [(h.job.id, h.job.lease_token or "") for h in acks]
        tenants = self._tenants_for(source)
        # *loads* is the round's (one computation per round, not per claim).
        if len(state.sources) == 1:
            # Every load is this source's: filtering them (thousands of tenants
            # with many recently started) dominated the event loop.
            held = heaviest(loads)
        else:
            members = self._catalog.source_members.get(source.key, frozenset())
            held = heaviest({t: load for t, load in loads.items() if t in members})
        if source.tenant_id is not None and source.tenant_id in loads:
            held = {source.tenant_id: loads[source.tenant_id]}
        after = self._after.get(source.key, "")
        worker_id, queues, fair = self._rt.worker_id, self._rt.queues, options.fair
        lease_seconds = options.lease_seconds

        request = ClaimRequest(
            worker_id=worker_id,
            queues=queues,
            limit=limit,
            lease_seconds=lease_seconds,
            tenants=tenants,
            fair=fair,
            held=held,
            after=after,
        )

        def work(c: Connection) -> tuple[set[int], list[Job]]:
            done = driver.complete(c, leases) if leases else set()
            return done, driver.claim(c, request)

        alone = not leases and driver.claims_in_one_statement(fair=fair)

        def transaction() -> tuple[set[int], list[Job]]:
            with driver.claim_connection(engine, alone=alone) as conn:
                return work(conn)

        try:
            done, jobs = await self._rt.threads.claim(transaction)
        except BaseException:
            if acks:
                state.to_complete.setdefault(source.key, [])[:0] = acks
            raise
        self._completer.acknowledged(acks, done)
        if fair and source.tenant_id is None:
            self._after[source.key] = next_after(
                after,
                [j.tenant_id for j in jobs],
                self._catalog.source_tenants.get(source.key, []),
                max(FAIR_WINDOW, limit),
            )
        return jobs

    def _tenants_for(self, source: JobSource) -> list[str] | None:
        if source.tenant_id is not None:
            return None
        return self._rt.tenants

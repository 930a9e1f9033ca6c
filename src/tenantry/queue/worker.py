"""The worker: claims jobs, runs handlers with their tenant set, records outcomes.

One asyncio loop per process runs:

* the claim loop, which fills free slots (plus a small prefetch buffer) from
  every job source, woken by LISTEN/NOTIFY (PostgreSQL), an in-process signal
  (SQLite) or, failing both, a poll interval;
* one task per running job, inside ``tenant_context(job.tenant_id)``;
* a completer that acknowledges finished jobs in batches, one statement per
  source;
* a heartbeat that extends the leases of every job this worker holds;
* maintenance: staging due scheduled/retryable jobs and rescuing jobs whose
  lease expired because their worker died.

Every outcome is fenced on the job's lease token and ``state = 'running'``: a
worker whose lease was taken over (it stalled, or was presumed dead) cannot
overwrite the newer attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import heapq
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import copy_context
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

import psycopg
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from tenantry.errors import (
    DB_ERRORS,
    LeaseLostError,
    PayloadValidationError,
    TenantNotFoundError,
    TenantryError,
    UnknownJobKind,
)
from tenantry.queue import control
from tenantry.queue.backends.postgres import CHANNEL
from tenantry.queue.backends.sqlite import wakeups
from tenantry.queue.buffer import AdaptivePrefetch, FixedPrefetch, JobBuffer
from tenantry.queue.client import Queue
from tenantry.queue.context import JobContext
from tenantry.queue.fairness import (
    FAIR_WINDOW,
    Contender,
    DecayingCounts,
    next_after,
    shares,
    virtual_key,
)
from tenantry.queue.job import Job, utcnow
from tenantry.queue.registry import Handler, JobRegistry
from tenantry.queue.retry import RetryPolicy
from tenantry.queue.sources import JobSource
from tenantry.tenancy.catalog import Tenant, TenantStatus
from tenantry.tenancy.context import tenant_context
from tenantry.tenancy.logs import get_logger

if TYPE_CHECKING:
    from tenantry.tenancy.facade import Tenancy

log = get_logger(__name__)
T = TypeVar("T")

#: Half-life (seconds) of the recent starts that count towards a tenant's load.
LOAD_HALF_LIFE = 2.0
#: Longest an acknowledgement waits for a claim to carry it (see _completer).
ACK_MAX_DELAY = 0.05
#: While places are free, claims come at least this often (see _claim_loop).
CLAIM_INTERVAL = 0.02
#: A worker serving at least this many tenants keeps all their statuses cached
#: (see _status_listing_due): listed again after this share of the cache's ttl...
STATUS_LISTING_MIN_TENANTS = 64
STATUS_LISTING_SHARE = 0.6
#: ...but listing the statuses takes at most this share of the time.
STATUS_LISTING_MAX_LOAD = 0.05

#: Exceptions that mean "the database is away", not "the job failed".


class JobTimeoutError(TenantryError, TimeoutError):
    """The handler ran longer than its timeout; the attempt counts as failed."""


class _HandlerTimeout(Exception):
    def __init__(self, original: TimeoutError) -> None:
        super().__init__(str(original))
        self.original = original


@dataclass
class WorkerStats:
    claimed: int = 0
    completed: int = 0
    retried: int = 0
    dead: int = 0
    lost: int = 0
    released: int = 0
    rescued: int = 0
    postponed: int = 0  # claimed, then put back: the catalog said its tenant is not active


@dataclass
class TenantCounters:
    started: int = 0
    completed: int = 0
    failed: int = 0  # attempts that failed and will be retried
    dead: int = 0


class _Listing(NamedTuple):
    """What a refresh found in the catalog (``Worker._list_tenants``)."""

    grouped: dict[str, tuple[JobSource, list[Tenant]]]
    source_tenants: dict[str, list[str]]
    members: dict[str, frozenset[str]]
    weights: dict[str, int]


@dataclass
class _Held:
    source: JobSource
    job: Job
    task: asyncio.Task[None] | None = None
    done: bool = False
    ctx: JobContext | None = None


@dataclass
class _Backoff:
    """Exponential reconnect delays per source, so one dead store does not stall others."""

    until: dict[str, float] = field(default_factory=dict)
    delay: dict[str, float] = field(default_factory=dict)

    def ready(self, key: str) -> bool:
        return time.monotonic() >= self.until.get(key, 0.0)

    def failed(self, key: str) -> float:
        delay = min(30.0, max(0.2, self.delay.get(key, 0.1) * 2))
        self.delay[key] = delay
        self.until[key] = time.monotonic() + delay
        return delay

    def ok(self, key: str) -> None:
        if key in self.delay:
            self.delay.pop(key, None)
            self.until.pop(key, None)
            log.info("source %s is reachable again", key)


class WorkerObserver(Protocol):
    """Receives what the worker measures, e.g. for Prometheus (``tenantry serve``).

    The worker keeps only counters of its own; durations and latencies would
    otherwise be lost. Methods are called on the worker's event loop, so they
    must be quick and must not block. An exception they raise is logged and
    ignored: metrics must never stop jobs.
    """

    def claimed(self, jobs: Sequence[Job], seconds: float) -> None:
        """A claim transaction returned *jobs* after *seconds* (also when it found none)."""

    def handler_finished(self, job: Job, seconds: float, error: BaseException | None) -> None:
        """The handler of *job* returned (``error`` is None) or raised after *seconds*."""

    def outcome(self, job: Job, outcome: str) -> None:
        """An attempt ended ``completed``, ``retried``, ``dead`` or ``lost``."""


def _default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    """Runs jobs from every source the catalog knows (or a subset)."""

    def __init__(
        self,
        tenantry: Tenancy,
        registry: JobRegistry,
        *,
        concurrency: int = 10,
        prefetch: int | None = None,
        max_prefetch: int | None = None,
        queues: Sequence[str] | None = None,
        stores: Sequence[str] | None = None,
        tenants: Sequence[str] | None = None,
        lease_seconds: float = 30.0,
        heartbeat_interval: float | None = None,
        poll_interval: float = 1.0,
        rescue_interval: float = 5.0,
        refresh_interval: float = 10.0,
        shutdown_grace: float = 30.0,
        completion_batch: int = 500,
        ack_delay: float = 0.005,
        listen: bool = True,
        suspended_retry: float = 30.0,
        fair: bool = True,
        idle_poll_max: float = 2.0,
        full_sync_interval: float = 300.0,
        worker_id: str | None = None,
        observer: WorkerObserver | None = None,
        freeze_gc: bool = False,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.tenantry = tenantry
        self.registry = registry
        self.queue = Queue(tenantry, registry)
        self.concurrency = concurrency
        #: ``None``: adaptive (see ``AdaptivePrefetch``), between ``concurrency``
        #: and ``max_prefetch`` jobs held beyond the running ones.
        self.prefetch = prefetch
        self.max_prefetch = (
            max(concurrency, min(20 * concurrency, 1000)) if max_prefetch is None else max_prefetch
        )
        self._prefetch: AdaptivePrefetch | FixedPrefetch = (
            AdaptivePrefetch(concurrency, self.max_prefetch)
            if prefetch is None
            else FixedPrefetch(prefetch)
        )
        self.queues = list(queues) if queues else (registry.queues or ["default"])
        self.store_filter = list(stores) if stores else None
        self.tenant_filter = list(tenants) if tenants else None
        self.lease_seconds = lease_seconds
        self.heartbeat_interval = heartbeat_interval or lease_seconds / 3
        self.poll_interval = poll_interval
        self.rescue_interval = rescue_interval
        self.refresh_interval = refresh_interval
        self.shutdown_grace = shutdown_grace
        self.completion_batch = completion_batch
        self.ack_delay = ack_delay
        self.listen = listen
        self.suspended_retry = suspended_retry
        self.fair = fair
        self.idle_poll_max = idle_poll_max
        self.full_sync_interval = full_sync_interval
        self.worker_id = worker_id or _default_worker_id()
        self.observer = observer
        #: Freeze the process's heap when the worker has started (``_freeze_heap``).
        self.freeze_gc = freeze_gc
        self.stats = WorkerStats()
        #: Per-tenant counters of this worker (the database-wide view is Queue.stats()).
        self.tenant_stats: dict[str, TenantCounters] = {}

        self._sources: list[JobSource] = []
        self._rotation = 0
        self._held: dict[tuple[str, int], _Held] = {}
        self._buffer: JobBuffer[_Held] = JobBuffer(fair=fair)
        self._running = 0
        self._active: dict[str, int] = {}  # running jobs per tenant in this worker
        self._to_complete: dict[str, list[_Held]] = {}
        self._stopping = False
        self._hard_stop = False
        self._started = asyncio.Event()
        self._backoff = _Backoff()
        self._executor = ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="tenantry-job"
        )
        self._claim_engines: dict[str, Engine] = {}
        # Claims run on one thread of their own (see Store.claim_engine): a
        # claim's round trips then do not each wait for a turn of a busy loop.
        self._claimer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tenantry-claim")
        self._claim_future: Future[tuple[set[int], list[Job]]] | None = None
        # Catalog reads and control-row writes (_offload): their threads are
        # tracked so that run() returns only once none holds a connection.
        self._io = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tenantry-io")
        self._offloaded: set[Future[Any]] = set()
        self._claiming = False  # a claim transaction is under way
        # Adaptive polling of databases without LISTEN: key -> (next poll, interval).
        self._idle: dict[str, tuple[float, float]] = {}
        self._synced: dict[str, tuple[str, datetime]] = {}  # tenant -> (source, updated_at)
        self._recent = DecayingCounts(LOAD_HALF_LIFE, time.monotonic())  # starts per tenant
        self._ranked: dict[str, float] = {}  # see _heavy_loads
        self._ranked_until = 0.0
        self._weights: dict[str, int] = {}  # tenant -> fair-share weight (catalog)
        self._listing_seconds = 0.0  # how long the last status listing took
        self._listed: dict[str, Tenant] = {}  # the catalog at the last refresh
        self._weight_of: dict[str, tuple[Tenant, int]] = {}  # weights, per catalog entry
        self._source_tenants: dict[str, list[str]] = {}  # source key -> its tenants, sorted
        self._source_members: dict[str, frozenset[str]] = {}  # the same, for lookups
        self._after: dict[str, str] = {}  # source key -> where its next fair window starts
        self._last_full_sync = 0.0
        self._unsubscribe: list[Callable[[], None]] = []
        self._listeners: dict[str, asyncio.Task[None]] = {}
        self._signals = 0
        self._busy_threads = 0
        self._threads_lock = threading.Lock()

    # -- public control ---------------------------------------------------------
    def stop(self, *, hard: bool = False) -> None:
        """Stop claiming; with ``hard=True`` also cancel running jobs at once."""
        self._stopping = True
        self._hard_stop = self._hard_stop or hard
        wake = getattr(self, "_wake", None)
        if wake is not None:
            wake.set()
        done = getattr(self, "_hard_event", None)
        if hard and done is not None:
            done.set()

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        hard = self._signals > 1
        log.warning(
            "received %s: %s",
            signal.Signals(signum).name,
            "stopping hard" if hard else f"draining (grace {self.shutdown_grace:g}s)",
        )
        self.stop(hard=hard)

    async def wait_started(self) -> None:
        await self._started.wait()

    # -- main ---------------------------------------------------------------------
    async def run(self, *, install_signals: bool = False) -> WorkerStats:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._wake = asyncio.Event()
        self._ack = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._hard_event = asyncio.Event()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
        await self._refresh_sources()
        if self.freeze_gc:
            _freeze_heap()
        background = [
            asyncio.create_task(self._keep_running(self._completer), name="tenantry-completer"),
            asyncio.create_task(self._keep_running(self._heartbeat), name="tenantry-heartbeat"),
            asyncio.create_task(self._keep_running(self._maintenance), name="tenantry-maintenance"),
        ]
        log.info(
            "worker %s started: %d slots, queues %s, %d source(s)",
            self.worker_id,
            self.concurrency,
            ",".join(self.queues),
            len(self._sources),
        )
        self._started.set()
        try:
            await self._claim_loop()
            await self._drain()
        finally:
            # Never cancel the completer half-way through writing a batch: that
            # batch would be neither written nor queued for the final flush.
            async with self._flush_lock:
                for task in background:
                    task.cancel()
            for task in self._listeners.values():
                task.cancel()
            await asyncio.gather(*background, *self._listeners.values(), return_exceptions=True)
            await self._flush_completions(final=True)
            for unsubscribe in self._unsubscribe:
                unsubscribe()
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._claimer.shutdown(wait=False, cancel_futures=True)
            self._io.shutdown(wait=False, cancel_futures=True)
            log.info("worker %s stopped: %s", self.worker_id, self.stats)
            await self._settle_threads()  # last: a second cancel may end the wait
        return self.stats

    async def _settle_threads(self) -> None:
        """Wait for database calls still running on threads (the run was cancelled mid-call).

        A cancelled ``await`` does not stop the thread under it. Its connection
        must go back to the pool before the caller disposes the engines:
        returned to a disposed pool it would never be closed. Jobs a claim
        took for nobody are rescued when their leases expire, as after a crash.
        """
        pending = [f for f in (self._claim_future, *list(self._offloaded)) if f is not None]
        waiting = {asyncio.wrap_future(f) for f in pending if not f.done()}
        if not waiting:
            return
        try:
            await asyncio.wait(waiting, timeout=self.lease_seconds)
        except asyncio.CancelledError:  # cancelled again: stop waiting, as asked
            log.warning("worker %s stopped before its database calls returned", self.worker_id)
            raise

    async def _offload(self, fn: Callable[..., T], *args: Any) -> T:
        """``asyncio.to_thread`` for the worker's own blocking calls, tracked (_settle_threads)."""
        future = self._io.submit(copy_context().run, fn, *args)
        self._offloaded.add(future)
        future.add_done_callback(self._offloaded.discard)
        return await asyncio.wrap_future(future)

    async def _keep_running(self, loop: Callable[[], Awaitable[None]]) -> None:
        """Restart a background loop after an unexpected error instead of losing it."""
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # a dead heartbeat or rescuer would be silent
                log.exception("%s failed; restarting it in 1s", loop.__name__)
                await asyncio.sleep(1.0)

    async def _claim_loop(self) -> None:
        last_claim = 0.0
        while not self._stopping:
            self._wake.clear()
            self._start_buffered()
            now = time.monotonic()
            capacity = self.concurrency + self._prefetch.value(now)
            # Claim in batches: each claim is a commit, so topping up one job
            # at a time would cost a round trip (and an fsync) per job. But
            # not rarer than every CLAIM_INTERVAL while places are free: a
            # deep buffer of one tenant's jobs must not keep another tenant's
            # new job waiting until half of it has drained.
            min_batch = max(1, capacity // 2)
            want = capacity - self._running - len(self._buffer)
            stale = now - last_claim >= CLAIM_INTERVAL
            got = 0
            if want >= min_batch or (want > 0 and (not self._buffer or stale)):
                last_claim = now
                self._claiming = True
                try:
                    got = await self._claim_round(want)
                finally:
                    self._claiming = False
                self._start_buffered()
            if got and got >= want:
                continue  # there may be more: claim again as soon as slots allow
            if self._stopping:
                break
            timeout = self.poll_interval
            if 0 < want < min_batch:
                timeout = min(timeout, max(0.001, last_claim + CLAIM_INTERVAL - now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _start_buffered(self) -> None:
        started = 0
        while self._buffer and self._running < self.concurrency and not self._stopping:
            held = self._buffer.pop_next(self._active)
            self._running += 1
            tenant_id = held.job.tenant_id
            self._active[tenant_id] = self._active.get(tenant_id, 0) + 1
            self._counters(tenant_id).started += 1
            held.task = asyncio.create_task(self._run_job(held))
            started += 1
        self._prefetch.started(started)

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
        sources = self._sources
        if not sources:
            return 0
        now = time.monotonic()
        n = len(sources)
        start = self._rotation % n
        self._rotation += 1
        due = [
            s
            for s in (sources[(start + i) % n] for i in range(n))
            if self._backoff.ready(s.key) and self._idle.get(s.key, (0.0, 0.0))[0] <= now
        ]
        if not due:
            return 0
        if len(due) == 1:  # nothing to weigh
            only = due[0]
            # A store database's claim reads only the heaviest loads (``_heaviest``):
            # gathered directly, not from every tenant seen in the last minute.
            loads = self._heavy_loads(now) if only.tenant_id is None else self._loads(now)
            got = await self._claim_into(only, want, loads)
            self.stats.claimed += got
            return got
        loads = self._loads(now)
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
        min_share = max(1, min(want, self.concurrency // 2))
        contenders.sort(key=lambda c: (virtual_key(c.running, 1, c.weight), c.head))
        picked = contenders[: max(1, want // min_share)]
        plan = shares(picked, want)
        by_key = {s.key: s for s in due}
        total = 0
        full: list[JobSource] = []
        for c in picked:
            asked = min(plan.get(c.tenant_id, 0), want - total)
            if asked <= 0 or self._stopping:
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
            if total >= want or self._stopping:
                break
            # A source may be asked again: its jobs claimed above count now.
            total += await self._claim_into(source, want - total, self._loads(time.monotonic()))
        self.stats.claimed += total
        return total

    def _source_weight_and_load(
        self, source: JobSource, loads: dict[str, float]
    ) -> tuple[int, float]:
        if source.tenant_id is not None:
            return self._weights.get(source.tenant_id, 1), loads.get(source.tenant_id, 0.0)
        members = self._source_members.get(source.key, frozenset())
        busy = [t for t, load in loads.items() if load > 0 and t in members]
        weight = sum(self._weights.get(t, 1) for t in busy)
        return max(1, weight), sum(loads[t] for t in busy)

    def _loads(self, now: float) -> dict[str, float]:
        """Each tenant's load in this worker: jobs held now plus recent starts, decaying.

        The fair order needs memory: a one-slot worker running transactional
        jobs holds nothing between jobs, and without the recent starts every
        tenant would tie at every claim. Starts decay with a half-life of
        ``LOAD_HALF_LIFE`` seconds.
        """
        loads = self._recent.values(now)
        for item in self._held.values():
            loads[item.job.tenant_id] = loads.get(item.job.tenant_id, 0.0) + 1.0
        return loads

    def _heavy_loads(self, now: float) -> dict[str, float]:
        """``_loads`` of the tenants whose load is at least ``HEAVY_LOAD``.

        ``_heaviest`` of this equals ``_heaviest`` of every load: a tenant
        left out has fewer recent starts than that and holds no job here.

        Only when more tenants than a claim takes (``MAX_HELD_IN_CLAIM``) have
        heavy recent starts, where the claim already keeps only the heaviest,
        is that ranking of recent starts reused for ``RANK_REFRESH`` seconds:
        ranking ten thousand tenants per claim was two fifths of the event
        loop. Jobs held now are always counted as they are.
        """
        if now < self._ranked_until:
            loads = dict(self._ranked)
        else:
            loads = self._recent.heavy(now, HEAVY_LOAD)
            if len(loads) > MAX_HELD_IN_CLAIM:
                self._ranked = _heaviest(loads)
                self._ranked_until = now + RANK_REFRESH
                loads = dict(self._ranked)
        for item in self._held.values():
            tenant_id = item.job.tenant_id
            if tenant_id not in loads:
                loads[tenant_id] = self._recent.value(tenant_id, now)
            loads[tenant_id] += 1.0
        return loads

    def _started_recently(self, tenant_id: str) -> None:
        self._recent.add(tenant_id, time.monotonic())

    async def _claim_into(self, source: JobSource, limit: int, loads: dict[str, float]) -> int:
        started = time.perf_counter()
        try:
            jobs = await self._claim(source, limit, loads)
        except DB_ERRORS as exc:
            delay = self._backoff.failed(source.key)
            log.warning(
                "claim from %s failed (%s); retrying in %.1fs", source.key, _short(exc), delay
            )
            return 0
        seconds = time.perf_counter() - started
        self._prefetch.claimed(seconds)
        self._observe("claimed", jobs, seconds)
        self._backoff.ok(source.key)
        if jobs:
            self._idle.pop(source.key, None)
        else:
            # Nothing there: leave it out of the next rounds until a wake-up
            # names it or its poll comes (a store database every
            # poll_interval; a tenant database after a growing interval).
            longest = self.idle_poll_max if source.tenant_id is not None else self.poll_interval
            interval = self._idle.get(source.key, (0.0, self.poll_interval / 2))[1]
            interval = min(longest, max(self.poll_interval, interval * 2))
            self._idle[source.key] = (time.monotonic() + interval, interval)
        catalog = self.tenantry.catalog
        missing = {j.tenant_id for j in jobs if catalog.status_cached(j.tenant_id) is None}
        if missing:
            # One catalog query for the batch's tenants the cache lacks, not
            # one per job when it starts (_tenant_ready).
            try:
                await self._offload(catalog.warm, missing)
            except DB_ERRORS as exc:
                log.debug("catalog warm-up failed (%s); jobs look their tenants up", _short(exc))
        for job in jobs:
            held = _Held(source, job)
            self._held[(source.key, job.id)] = held
            self._buffer.append(held)
        return len(jobs)

    async def _claim(self, source: JobSource, limit: int, loads: dict[str, float]) -> list[Job]:
        """Acknowledge this source's finished jobs and claim new ones in one transaction."""
        # A store's engine is long-lived; a tenant database's comes from the
        # store's bounded LRU each time, so the connection count stays bounded.
        engine = self._claim_engines.get(source.key)
        if engine is None:
            engine = source.claim_engine()
            if source.tenant_id is None:
                self._claim_engines[source.key] = engine
        backend = source.backend
        acks = self._to_complete.pop(source.key, [])
        leases = [(h.job.id, h.job.lease_token or "") for h in acks]
        tenants = self._tenants_for(source)
        # *loads* is the round's (one computation per round, not per claim).
        if len(self._sources) == 1:
            # Every load is this source's: filtering them (thousands of tenants
            # with many recently started) cost a third of the event loop.
            held = _heaviest(loads)
        else:
            members = self._source_members.get(source.key, frozenset())
            held = _heaviest({t: load for t, load in loads.items() if t in members})
        if source.tenant_id is not None and source.tenant_id in loads:
            held = {source.tenant_id: loads[source.tenant_id]}
        after = self._after.get(source.key, "")

        def work(c: Connection) -> tuple[set[int], list[Job]]:
            done = backend.complete(c, leases) if leases else set()
            jobs = backend.claim(
                c,
                worker_id=self.worker_id,
                queues=self.queues,
                limit=limit,
                lease_seconds=self.lease_seconds,
                tenants=tenants,
                fair=self.fair,
                held=held,
                after=after,
            )
            return done, jobs

        alone = not leases and backend.claims_in_one_statement(fair=self.fair)

        def transaction() -> tuple[set[int], list[Job]]:
            with backend.claim_connection(engine, alone=alone) as conn:
                return work(conn)

        try:
            self._claim_future = self._claimer.submit(transaction)
            done, jobs = await asyncio.wrap_future(self._claim_future)
        except BaseException:
            if acks:
                self._to_complete.setdefault(source.key, [])[:0] = acks
            raise
        self._acknowledged(acks, done)
        if self.fair and source.tenant_id is None:
            self._after[source.key] = next_after(
                after,
                [j.tenant_id for j in jobs],
                self._source_tenants.get(source.key, []),
                max(FAIR_WINDOW, limit),
            )
        return jobs

    def _tenants_for(self, source: JobSource) -> list[str] | None:
        if source.tenant_id is not None or self.tenant_filter is None:
            return None
        return self.tenant_filter

    def _observe(self, event: str, *args: Any) -> None:
        if self.observer is None:
            return
        try:
            getattr(self.observer, event)(*args)
        except Exception:  # a metrics bug must not stop jobs
            log.exception("worker observer failed on %s", event)

    def _counters(self, tenant_id: str) -> TenantCounters:
        counters = self.tenant_stats.get(tenant_id)
        if counters is None:
            counters = self.tenant_stats[tenant_id] = TenantCounters()
        return counters

    # -- running one job ----------------------------------------------------------
    async def _run_job(self, held: _Held) -> None:
        job = held.job
        try:
            with tenant_context.trusted(job.tenant_id):  # validated when enqueued
                await self._execute(held)
        except asyncio.CancelledError:
            # Shutdown past the grace period: the drain releases the lease.
            raise
        except Exception as exc:  # a worker must survive anything a job does
            log.exception("internal error running job %s", job.id)
            if (held.source.key, job.id) in self._held and not held.done:
                # Record it as a failed attempt rather than heartbeat it forever.
                await self._record_failure(held, exc, self.registry.default_retry)
        finally:
            self._running -= 1
            self._started_recently(job.tenant_id)
            left = self._active.get(job.tenant_id, 1) - 1
            if left:
                self._active[job.tenant_id] = left
            else:
                self._active.pop(job.tenant_id, None)
            # The freed slot takes the next buffered job now, not when the
            # claim loop next looks: that may be a whole claim later, and
            # while a claim was under way only the jobs started before it ran
            # (10 slots and 35 ms claims held a worker to 285 jobs/s).
            self._start_buffered()
            self._wake.set()

    async def _tenant_ready(self, held: _Held) -> bool:
        """Re-check the tenant (cached briefly) before running its job.

        A suspended (or provisioning/deleting) tenant's job goes back to wait,
        its attempt not spent; a job whose tenant is gone is dead with a reason.
        """
        job = held.job
        if self.tenantry.catalog.status_cached(job.tenant_id) is TenantStatus.ACTIVE:
            return True
        tenant = self.tenantry.catalog.get_cached(job.tenant_id)
        if tenant is None:
            try:
                tenant = await self._offload(self.tenantry.catalog.get, job.tenant_id)
            except TenantNotFoundError as exc:
                gone = TenantNotFoundError(f"tenant {job.tenant_id!r} no longer exists: {exc}")
                await self._record_failure(held, gone, self.registry.default_retry, dead=True)
                return False
            except DB_ERRORS as exc:
                # The catalog is unreachable: not the job's fault. Hand it back.
                log.warning("job %s: catalog lookup failed (%s); releasing it", job.id, _short(exc))
                await self._release([held])
                return False
        if tenant.status is TenantStatus.ACTIVE:
            return True
        until = utcnow() + timedelta(seconds=self.suspended_retry)
        source = held.source
        try:
            async with source.async_engine().begin() as conn:
                await conn.run_sync(source.backend.postpone, job, until)
        except DB_ERRORS as exc:
            log.warning("could not postpone job %s: %s", job.id, _short(exc))
        self._forget(held)
        self.stats.postponed += 1
        log.info("job %s waits: tenant %s is %s", job.id, job.tenant_id, tenant.status.value)
        return False

    async def _execute(self, held: _Held) -> None:
        job, source = held.job, held.source
        if not await self._tenant_ready(held):
            return
        try:
            handler = self.registry.get(job.kind)
            payload = handler.validate_job(job)
        except (UnknownJobKind, PayloadValidationError) as exc:
            # A poison message: retrying cannot help, so it is dead at once.
            log.error("job %s (%s) is dead at once: %s", job.id, job.kind, exc)
            await self._record_failure(held, exc, self.registry.default_retry, dead=True)
            return
        ctx = JobContext(job=job, tenantry=self.tenantry, worker_id=self.worker_id, logger=log)
        held.ctx = ctx
        started = time.perf_counter()
        try:
            await self._call(handler, ctx, payload, source)
        except LeaseLostError as exc:
            self._observe("handler_finished", job, time.perf_counter() - started, exc)
            self._forget(held)
            self.stats.lost += 1
            self._observe("outcome", job, "lost")
            log.warning("job %s: %s", job.id, exc)
            return
        except Exception as exc:  # handler failures (and JobTimeoutError) are data
            self._observe("handler_finished", job, time.perf_counter() - started, exc)
            await self._record_failure(held, exc, handler.retry)
            return
        self._observe("handler_finished", job, time.perf_counter() - started, None)
        if handler.transactional:
            self._forget(held)
            self.stats.completed += 1
            self._counters(job.tenant_id).completed += 1
            self._observe("outcome", job, "completed")
        elif (source.key, job.id) in self._held:  # not abandoned meanwhile (_abandon)
            held.done = True
            self._to_complete.setdefault(source.key, []).append(held)
            self._ack.set()

    async def _call(
        self, handler: Handler, ctx: JobContext, payload: Any, source: JobSource
    ) -> None:
        if handler.transactional:
            call: Awaitable[None] = (
                self._transactional_async(handler, ctx, payload, source)
                if handler.is_async
                else self._in_thread(self._transactional_sync, handler, ctx, payload, source)
            )
        elif handler.is_async:
            call = handler.fn(ctx, payload)
        else:
            call = self._in_thread(handler.fn, ctx, payload)
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

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        # copy_context: the thread sees this task's tenant, and nothing leaks back.
        ctx = copy_context()

        def call() -> T:
            with self._threads_lock:
                self._busy_threads += 1
            try:
                return ctx.run(fn, *args)
            finally:
                with self._threads_lock:
                    self._busy_threads -= 1

        return await self._loop.run_in_executor(self._executor, call)

    @property
    def busy_threads(self) -> int:
        """Sync handlers still running in threads (they cannot be interrupted)."""
        with self._threads_lock:
            return self._busy_threads

    def _transactional_sync(
        self, handler: Handler, ctx: JobContext, payload: Any, source: JobSource
    ) -> None:
        with self.tenantry.session() as session, session.begin():
            ctx.session = session
            handler.fn(ctx, payload)
            _complete_in(session.connection(), source, ctx.job)

    async def _transactional_async(
        self, handler: Handler, ctx: JobContext, payload: Any, source: JobSource
    ) -> None:
        async with self.tenantry.async_session() as session, session.begin():
            ctx.session = session
            await handler.fn(ctx, payload)
            await session.run_sync(lambda s: _complete_in(s.connection(), source, ctx.job))

    # -- outcomes -------------------------------------------------------------------
    def _forget(self, held: _Held) -> None:
        self._held.pop((held.source.key, held.job.id), None)

    async def _record_failure(
        self, held: _Held, exc: BaseException, policy: RetryPolicy, *, dead: bool = False
    ) -> None:
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
        for attempt in range(5):
            try:
                async with source.async_engine().begin() as conn:
                    ok = await conn.run_sync(
                        lambda c: source.backend.fail(c, job, error, retry_at=retry_at, dead=dead)
                    )
                break
            except DB_ERRORS as db_exc:
                if attempt == 4 or self._hard_stop:
                    log.error(
                        "could not record failure of job %s (%s); its lease will expire "
                        "and it will be rescued",
                        job.id,
                        _short(db_exc),
                    )
                    self._forget(held)
                    return
                await asyncio.sleep(0.2 * 2**attempt)
        self._forget(held)
        if not ok:
            self.stats.lost += 1
            self._observe("outcome", job, "lost")
            log.warning("job %s: lease lost before its failure could be recorded", job.id)
        elif dead:
            self.stats.dead += 1
            self._counters(job.tenant_id).dead += 1
            self._observe("outcome", job, "dead")
            log.error(
                "job %s (%s) is dead after attempt %d: %s", job.id, job.kind, job.attempt, exc
            )
        else:
            self.stats.retried += 1
            self._counters(job.tenant_id).failed += 1
            self._observe("outcome", job, "retried")
            log.warning(
                "job %s (%s) failed attempt %d/%d, retry at %s: %s",
                job.id,
                job.kind,
                job.attempt,
                job.max_attempts,
                retry_at.isoformat() if retry_at else "-",
                exc,
            )

    async def _completer(self) -> None:
        """Acknowledge finished jobs that no claim has carried along.

        While the queue is busy, acknowledgements ride on the next claim's
        transaction; this loop catches the rest after a short delay, so an idle
        worker still records completions within milliseconds. Writes that fail
        are retried every 0.5 s, outside the flush lock, so a stop never waits
        behind a database that is away.
        """
        while True:
            await self._ack.wait()
            self._ack.clear()
            await asyncio.sleep(self.ack_delay)
            # While jobs are in flight, a claim comes as soon as enough slots
            # are free and carries the acknowledgements in its transaction: a
            # separate one here would cost a commit for little. Wait for it,
            # up to ACK_MAX_DELAY; an idle worker acknowledges at once.
            waited = self.ack_delay
            while (
                self._to_complete
                and not self._stopping
                and waited < ACK_MAX_DELAY
                and (self._running or self._buffer or self._claiming)
            ):
                await asyncio.sleep(self.ack_delay)
                waited += self.ack_delay
            if not self._to_complete:
                continue
            if not await self._flush_completions():
                await asyncio.sleep(0.5)
                self._ack.set()

    async def _flush_completions(self, *, final: bool = False) -> bool:
        """One pass over the pending acknowledgements; False if some stay pending."""
        async with self._flush_lock:
            return await self._flush_locked(final=final)

    async def _flush_locked(self, *, final: bool) -> bool:
        pending, self._to_complete = self._to_complete, {}
        retry: dict[str, list[_Held]] = {}
        for key, items in pending.items():
            for start in range(0, len(items), self.completion_batch):
                chunk = items[start : start + self.completion_batch]
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
            self._to_complete.setdefault(key, [])[:0] = items
        return False

    async def _complete_chunk(self, chunk: list[_Held]) -> bool:
        source = chunk[0].source
        leases = [(h.job.id, h.job.lease_token or "") for h in chunk]
        try:
            async with source.async_engine().begin() as conn:
                done = await conn.run_sync(source.backend.complete, leases)
        except DB_ERRORS as exc:
            log.warning(
                "acknowledging %d job(s) on %s failed: %s", len(chunk), source.key, _short(exc)
            )
            return False
        self._acknowledged(chunk, done)
        return True

    def _acknowledged(self, items: list[_Held], done: set[int]) -> None:
        for held in items:
            self._forget(held)
            if held.job.id in done:
                self.stats.completed += 1
                self._counters(held.job.tenant_id).completed += 1
                self._observe("outcome", held.job, "completed")
            else:
                self.stats.lost += 1
                self._observe("outcome", held.job, "lost")
                log.warning("job %s finished but its lease had been taken over", held.job.id)

    # -- leases ---------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            by_source: dict[str, list[_Held]] = {}
            for held in list(self._held.values()):
                by_source.setdefault(held.source.key, []).append(held)
            for items in by_source.values():
                source = items[0].source
                leases = [(h.job.id, h.job.lease_token or "") for h in items]
                try:
                    async with source.async_engine().begin() as conn:
                        kept = await conn.run_sync(
                            source.backend.extend_leases, leases, self.lease_seconds
                        )
                except DB_ERRORS as exc:
                    log.warning("heartbeat on %s failed: %s", source.key, _short(exc))
                    continue
                for held in items:
                    if held.job.id not in kept and (source.key, held.job.id) in self._held:
                        self._lease_lost(held)

    def _abandon(self, key: str) -> None:
        """Give up the jobs of a source that is gone (its tenant database was dropped).

        Their rows went with the database: nothing can be acknowledged or
        heartbeated there any more, so running handlers learn their outcome is
        void and pending acknowledgements are dropped instead of retried forever.
        """
        dropped = self._to_complete.pop(key, [])
        for held in dropped:
            self._forget(held)
        self.stats.lost += len(dropped)
        for held in [h for h in self._held.values() if h.source.key == key]:
            self._lease_lost(held)
            if held in self._held.values():
                self._forget(held)
                self.stats.lost += 1

    def _lease_lost(self, held: _Held) -> None:
        """The job was cancelled or taken over: do not start it; tell a running handler."""
        if self._buffer.remove(held):
            self._forget(held)
            log.info("job %s was cancelled or taken over before it started", held.job.id)
            return
        if held.ctx is not None:
            held.ctx.lease_lost = True
        log.warning("job %s lost its lease (cancelled or taken over)", held.job.id)

    async def _maintenance(self) -> None:
        """Stage due jobs, rescue expired leases, refresh sources.

        Store databases are visited every tick. A tenant database where a
        visit found nothing to do is visited again after a growing interval
        (up to ``idle_poll_max``), so a worker serving hundreds of tenant
        databases does not open a transaction in each of them twice a second.
        """
        last_refresh = time.monotonic()
        last_statuses = 0.0
        last_rescue: dict[str, float] = {}
        idle: dict[str, tuple[float, float]] = {}
        tick = min(self.poll_interval, 0.5)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now - last_refresh >= self.refresh_interval:
                last_refresh = now
                with contextlib.suppress(*DB_ERRORS):
                    await self._refresh_sources()
            if self._status_listing_due(now - last_statuses):
                last_statuses = now
                with contextlib.suppress(*DB_ERRORS):
                    await self._cache_statuses()
            for source in list(self._sources):
                key = source.key
                if not self._backoff.ready(key) or idle.get(key, (0.0, 0.0))[0] > now:
                    continue
                rescue = now - last_rescue.setdefault(key, now) >= self.rescue_interval
                try:
                    async with source.async_engine().begin() as conn:
                        staged = await conn.run_sync(source.backend.stage_due)
                        rescued = (
                            await conn.run_sync(source.backend.rescue_expired) if rescue else []
                        )
                except DB_ERRORS as exc:
                    log.debug("maintenance on %s failed: %s", key, _short(exc))
                    continue
                if rescue:
                    last_rescue[key] = now
                if source.tenant_id is not None:
                    if staged or rescued:
                        idle.pop(key, None)
                    else:
                        interval = min(self.idle_poll_max, idle.get(key, (0.0, tick / 2))[1] * 2)
                        idle[key] = (now + interval, interval)
                if rescued:
                    self.stats.rescued += len(rescued)
                    log.warning("rescued %d job(s) with expired leases on %s", len(rescued), key)
                if staged or rescued:
                    self._wake_source(key)

    # -- sources and wake-ups ---------------------------------------------------------
    def _status_listing_due(self, since: float) -> bool:
        """Whether to list the tenants' statuses now, to keep them cached.

        A job whose tenant's status is not cached waits for a catalog lookup
        before it starts (``_claim_into`` warms the batch's tenants: about
        1.5 ms here). With thousands of tenants most jobs' tenants were not
        seen within the cache's ttl, so most batches waited. A worker with
        many tenants lists every status (``Catalog.cache_statuses``) before
        the listing expires; with a catalog so large that listing it costs
        more than ``STATUS_LISTING_MAX_LOAD`` of the time, less often (and
        batches warm their tenants as before).
        """
        ttl = self.tenantry.catalog.ttl
        if ttl <= 0 or len(self._weights) < STATUS_LISTING_MIN_TENANTS:
            return False
        every = max(ttl * STATUS_LISTING_SHARE, self._listing_seconds / STATUS_LISTING_MAX_LOAD)
        return since >= every

    async def _cache_statuses(self) -> None:
        started = time.perf_counter()
        await self._offload(self.tenantry.catalog.cache_statuses)
        self._listing_seconds = time.perf_counter() - started

    def _list_tenants(self) -> _Listing:
        """The catalog, grouped by source, and what the claims need of it.

        Runs on a thread, and does the per-tenant work there: with 10,000
        tenants, reading every weight from its settings on the event loop held
        jobs up for 35 ms at each refresh. Whole catalog entries are re-read,
        and weights worked out, only for tenants whose entry changed; every
        ``full_sync_interval`` the whole catalog is read, as the control rows
        are compared in full then (an edit made without ``updated_at``).
        """
        catalog = self.tenantry.catalog
        full = time.monotonic() - self._last_full_sync >= self.full_sync_interval
        listed = catalog.list() if full else catalog.list_since(self._listed)
        self._listed = {t.id: t for t in listed}
        grouped = self.queue.tenants_by_source(
            stores=self.store_filter, tenants=self.tenant_filter, listed=listed
        )
        known = self._weight_of
        weighed: dict[str, tuple[Tenant, int]] = {}
        for _, members in grouped.values():
            for tenant in members:
                hit = known.get(tenant.id)
                weighed[tenant.id] = (
                    hit if hit is not None and hit[0] is tenant else (tenant, _weight(tenant))
                )
        self._weight_of = weighed
        source_tenants = {key: sorted(t.id for t in m) for key, (_, m) in grouped.items()}
        return _Listing(
            grouped,
            source_tenants,
            {k: frozenset(v) for k, v in source_tenants.items()},
            {tenant_id: weight for tenant_id, (_, weight) in weighed.items()},
        )

    async def _refresh_sources(self) -> None:
        """Pick up tenants and databases added or removed, and repair control rows."""
        listing = await self._offload(self._list_tenants)
        grouped = listing.grouped
        known = {s.key for s in self._sources}
        sources = [grouped[k][0] for k in sorted(grouped)]
        for source in sources:
            if source.key in known:
                continue
            log.info("serving jobs from %s", source.key)
            if source.store.is_postgres:
                if self.listen and source.tenant_id is None and source.key not in self._listeners:
                    self._listeners[source.key] = asyncio.create_task(self._listen(source))
            else:
                db = source.engine().url.database or ""
                self._unsubscribe.append(
                    wakeups.subscribe(db, functools.partial(self._wake_threadsafe, source.key))
                )
        current = {s.key for s in sources}
        for key in known - current:
            log.info("no longer serving jobs from %s (tenant gone or moved)", key)
            self._idle.pop(key, None)
            self._claim_engines.pop(key, None)
            listener = self._listeners.pop(key, None)
            if listener is not None:
                listener.cancel()
            self._abandon(key)
        self._sources = sources
        self._source_tenants = listing.source_tenants
        self._source_members = listing.members
        self._weights = listing.weights
        await self._offload(self._sync_controls, grouped)

    def _sync_controls(self, grouped: dict[str, tuple[JobSource, list[Tenant]]]) -> None:
        """Write control rows for tenants changed since this worker last synced them.

        A full pass (every tenant, and pruning rows of deleted tenants) runs every
        ``full_sync_interval``; in between only catalog entries with a new
        ``updated_at`` are written, so a thousand tenant databases are not
        visited every refresh.
        """
        now = time.monotonic()
        full = now - self._last_full_sync >= self.full_sync_interval
        failed = False
        for key, (source, members) in grouped.items():
            todo = (
                members
                if full
                else [t for t in members if self._synced.get(t.id) != (key, t.updated_at)]
            )
            if not todo:
                continue
            try:
                with source.engine().begin() as conn:
                    control.sync(conn, todo)
                    if full and self.tenant_filter is None:
                        control.prune_missing(conn, {t.id for t in members})
            except DB_ERRORS as exc:
                failed = True
                log.debug("control rows on %s not synced: %s", key, _short(exc))
                continue
            for tenant in todo:
                self._synced[tenant.id] = (key, tenant.updated_at)
        if full and not failed:
            self._last_full_sync = now

    def _wake_threadsafe(self, key: str | None = None) -> None:
        self._loop.call_soon_threadsafe(self._wake_source, key)

    def _wake_source(self, key: str | None) -> None:
        if key is not None:
            self._idle.pop(key, None)  # named by the wake-up: poll it now
        self._wake.set()

    async def _listen(self, source: JobSource) -> None:
        url = source.engine().url.set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        delay = 0.5
        while not self._stopping:
            try:
                conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    delay = 0.5
                    self._wake_source(source.key)  # catch up on what came while away
                    async for _ in conn.notifies():
                        self._wake_source(source.key)
            except asyncio.CancelledError:
                raise
            except DB_ERRORS as exc:
                log.warning(
                    "LISTEN on %s lost (%s); polling until it is back", source.key, _short(exc)
                )
                await asyncio.sleep(delay)
                delay = min(30.0, delay * 2)

    # -- shutdown ---------------------------------------------------------------------
    async def _drain(self) -> None:
        """Let running jobs finish within the grace period, then hand the rest back."""
        buffered = self._buffer.clear()
        await self._release(buffered)
        pending: set[asyncio.Future[Any]] = {
            h.task for h in self._held.values() if h.task is not None and not h.task.done()
        }
        if pending and not self._hard_stop:
            log.info("waiting up to %gs for %d running job(s)", self.shutdown_grace, len(pending))
            hard: asyncio.Future[Any] = asyncio.ensure_future(self._hard_event.wait())
            deadline = self._loop.time() + self.shutdown_grace
            while pending and not hard.done():
                remaining = deadline - self._loop.time()
                if remaining <= 0:
                    break
                _, pending = await asyncio.wait(
                    pending | {hard}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(hard)
            hard.cancel()
        unfinished = [
            h
            for h in self._held.values()
            if h.task is not None and not h.task.done() and not h.done
        ]
        for held in unfinished:
            assert held.task is not None
            held.task.cancel()
        await asyncio.gather(*(h.task for h in unfinished if h.task), return_exceptions=True)
        await self._flush_completions(final=True)
        await self._release(unfinished)

    async def _release(self, items: list[_Held]) -> None:
        by_source: dict[str, list[_Held]] = {}
        for held in items:
            by_source.setdefault(held.source.key, []).append(held)
        for group in by_source.values():
            source = group[0].source
            leases = [(h.job.id, h.job.lease_token or "") for h in group]
            # Whatever happens below, this worker stops holding them: were they
            # kept, the heartbeat would renew leases for jobs nothing runs.
            for held in group:
                self._forget(held)
            try:
                async with source.async_engine().begin() as conn:
                    released = await conn.run_sync(source.backend.release, leases)
            except DB_ERRORS as exc:
                log.error(
                    "could not release %d job(s) on %s (%s); they return when their lease expires",
                    len(group),
                    source.key,
                    _short(exc),
                )
                continue
            self.stats.released += len(released)
            if released:
                log.info("released %d job(s) on %s for other workers", len(released), source.key)


#: At most this many tenants' loads go into a claim statement.
MAX_HELD_IN_CLAIM = 512
#: Below this (half a job) a tenant's load orders like an idle tenant's.
HEAVY_LOAD = 0.5
#: How long a ranking of more than MAX_HELD_IN_CLAIM tenants' recent starts is reused.
RANK_REFRESH = 0.25


def _freeze_heap() -> None:
    """Take every object alive now out of the cyclic garbage collector's reach.

    Process-wide (``gc.freeze()``), so only on request (``freeze_gc``; the
    ``tenantry worker`` and ``tenantry serve`` commands ask, their process is
    tenantry's). A worker's jobs are short-lived allocations that outlive a
    few young collections while buffered, and their promotion makes Python
    run full collections, which traverse the whole heap: modules, SQLAlchemy's
    and pydantic's machinery, the application. Each took 45-65 ms here, with
    the event loop and the claim thread stopped, two or three per 20,000
    no-op jobs; frozen first, under 2 ms (20,000-job drains: 16.1k against
    13.3k jobs/s, medians of 6 interleaved). Objects frozen are still freed
    when their last reference goes; only a reference cycle among them is
    never collected, so garbage is collected first.
    """
    gc.collect()
    gc.freeze()


def _heaviest(loads: dict[str, float]) -> dict[str, float]:
    """The loads worth sending: a tenant whose decayed load is below half a job
    orders like an idle one, and with ten thousand tenants started recently
    the whole map would be arrays of ten thousand values in every claim."""
    if len(loads) <= MAX_HELD_IN_CLAIM:
        return {t: v for t, v in loads.items() if v >= HEAVY_LOAD}
    # The cut from the loads alone, sorted in C: 2.5x faster than ranking
    # (load, tenant) pairs with nlargest over ten thousand tenants.
    cut = max(HEAVY_LOAD, sorted(loads.values(), reverse=True)[MAX_HELD_IN_CLAIM - 1])
    kept = {t: v for t, v in loads.items() if v >= cut}
    if len(kept) > MAX_HELD_IN_CLAIM:  # ties at the cut
        kept = dict(heapq.nlargest(MAX_HELD_IN_CLAIM, kept.items(), key=lambda kv: kv[1]))
    return kept


def _weight(tenant: Tenant) -> int:
    try:
        return control.QueueSettings.from_settings(tenant.settings).weight
    except TenantryError:
        return 1  # unreadable settings: the default share


def _complete_in(conn: Connection, source: JobSource, job: Job) -> None:
    """Mark the job completed inside the handler's own transaction, or void it."""
    done = source.backend.complete(conn, [(job.id, job.lease_token or "")])
    if job.id not in done:
        raise LeaseLostError(
            f"job {job.id}: lease lost before commit; the handler's writes were rolled back"
        )


def _short(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]

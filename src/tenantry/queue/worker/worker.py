"""The worker: claims jobs, runs handlers with their tenant set, records outcomes.

One asyncio loop per process runs, each part in a module of its own:

* the claim loop (``producer``), which fills free slots (plus a prefetch
  buffer) from every job source, woken by LISTEN/NOTIFY (PostgreSQL), an
  in-process signal (SQLite) or, failing both, a poll interval (``wakeups``);
* one task per running job, inside ``tenant_context(job.tenant_id)``
  (``executor``);
* a completer that acknowledges finished jobs in batches, one statement per
  source, and records failures (``completer``);
* a heartbeat that extends the leases of every job this worker holds
  (``leases``);
* maintenance: staging due scheduled/retryable jobs and rescuing jobs whose
  lease expired because their worker died (``maintenance``);
* the refresh of the sources, weights and control rows from the catalog
  (``catalog_sync``).

This module only wires them together and runs, stops and drains them.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tenantry.backoff import ExponentialBackoff
from tenantry.queue.client import Queue
from tenantry.queue.registry import JobRegistry
from tenantry.queue.worker.catalog_sync import CatalogSync
from tenantry.queue.worker.completer import Completer
from tenantry.queue.worker.executor import Executor
from tenantry.queue.worker.leases import Leases
from tenantry.queue.worker.maintenance import Maintenance, RescueExpired, StageDue
from tenantry.queue.worker.observe import (
    Report,
    TenantCounters,
    WorkerObserver,
    WorkerSignals,
    WorkerStats,
)
from tenantry.queue.worker.options import WorkerOptions
from tenantry.queue.worker.producer import Producer, TenantLoads
from tenantry.queue.worker.state import Runtime, WorkerState
from tenantry.queue.worker.threads import WorkerThreads
from tenantry.queue.worker.wakeups import Wakeups
from tenantry.tenancy.logs import get_logger

if TYPE_CHECKING:
    from tenantry.tenancy.facade import Tenancy

log = get_logger(__name__)

#: A background loop that fails is restarted after this delay, doubling...
RESTART_BASE = 1.0
#: ...up to this; a loop that ran this long before failing starts over at the base.
RESTART_CAP = 30.0


def _default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    """Runs jobs from every source the catalog knows (or a subset)."""

    def __init__(
        self,
        tenantry: Tenancy,
        registry: JobRegistry,
        options: WorkerOptions | None = None,
        *,
        observer: WorkerObserver | None = None,
    ) -> None:
        options = options if options is not None else WorkerOptions()
        self.tenantry = tenantry
        self.registry = registry
        self.options = options
        self.observer = observer
        self.queue = Queue(tenantry, registry)
        self.concurrency = options.concurrency
        self.queues = list(options.queues) if options.queues else (registry.queues or ["default"])
        self.worker_id = options.worker_id or _default_worker_id()
        report = Report(observer)
        self.stats: WorkerStats = report.stats
        #: Per-tenant counters of this worker (the database-wide view is QueueAdmin.stats()).
        self.tenant_stats: dict[str, TenantCounters] = report.tenant_stats
        #: What tests wait on instead of sleeping: claim rounds, acknowledgements, refreshes...
        self.signals: WorkerSignals = report.signals
        self.threads = WorkerThreads(options.concurrency)
        self._state = state = WorkerState(options)
        rt = Runtime(
            tenancy=tenantry,
            registry=registry,
            options=options,
            state=state,
            report=report,
            threads=self.threads,
            worker_id=self.worker_id,
            queues=self.queues,
            tenants=list(options.tenants) if options.tenants else None,
        )
        loads = TenantLoads(state.held)
        self._completer = Completer(rt)
        self._leases = Leases(rt)
        self._executor = Executor(rt, self._completer, loads)
        self._wakeups = Wakeups(rt)
        #: The catalog as this worker last read it: sources, weights.
        self.catalog_sync = CatalogSync(
            rt, self.queue.admin, self._wakeups.watch, self._source_gone
        )
        self._producer = Producer(rt, self.catalog_sync, self._executor, self._completer, loads)
        self._maintenance = Maintenance(rt, [StageDue(), RescueExpired(rt)])
        self._background: list[asyncio.Task[None]] = []
        self._started = asyncio.Event()
        self._signals_received = 0

    # -- public control ---------------------------------------------------------
    def stop(self, *, hard: bool = False) -> None:
        """Stop claiming; with ``hard=True`` also cancel running jobs at once."""
        state = self._state
        state.stopping = True
        state.hard_stop = state.hard_stop or hard
        state.wake.set()
        if hard:
            state.hard.set()

    async def wait_started(self) -> None:
        await self._started.wait()

    @property
    def busy_threads(self) -> int:
        """Sync handlers still running in threads (they cannot be interrupted)."""
        return self.threads.busy

    @property
    def calls_in_flight(self) -> int:
        """Database calls (claims, catalog reads) still running on the worker's threads."""
        return len(self.threads.pending())

    def background_tasks(self) -> list[asyncio.Task[Any]]:
        """The worker's loops and listeners running now (not the jobs)."""
        return [*self._background, *self._wakeups.tasks()]

    def _on_signal(self, signum: int) -> None:
        self._signals_received += 1
        hard = self._signals_received > 1
        log.warning(
            "received %s: %s",
            signal.Signals(signum).name,
            "stopping hard" if hard else f"draining (grace {self.options.shutdown_grace:g}s)",
        )
        self.stop(hard=hard)

    # -- main ---------------------------------------------------------------------
    async def run(self, *, install_signals: bool = False) -> WorkerStats:
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
        await self.catalog_sync.refresh()
        if self.options.freeze_gc:
            _freeze_heap()
        self._background = background = [
            self._spawn(self._completer.run, "tenantry-completer"),
            self._spawn(self._leases.heartbeat, "tenantry-heartbeat"),
            self._spawn(self._maintenance.run, "tenantry-maintenance"),
            self._spawn(self.catalog_sync.run, "tenantry-catalog"),
        ]
        log.info(
            "worker %s started: %d slots, queues %s, %d source(s)",
            self.worker_id,
            self.concurrency,
            ",".join(self.queues),
            len(self._state.sources),
        )
        self._started.set()
        try:
            await self._producer.run()
            await self._drain()
        finally:
            # Never cancel the completer half-way through writing a batch: that
            # batch would be neither written nor queued for the final flush.
            async with self._state.flush_lock:
                for task in background:
                    task.cancel()
            self._wakeups.close()
            await asyncio.gather(*background, *self._wakeups.tasks(), return_exceptions=True)
            await self._completer.flush(final=True)
            self._wakeups.unsubscribe()
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            self.threads.shutdown()
            log.info("worker %s stopped: %s", self.worker_id, self.stats)
            await self._settle_threads()  # last: a second cancel may end the wait
        return self.stats

    def _spawn(self, body: Callable[[], Awaitable[None]], name: str) -> asyncio.Task[None]:
        return asyncio.create_task(self._keep_running(body, name), name=name)

    async def _keep_running(self, body: Callable[[], Awaitable[None]], name: str) -> None:
        """Restart a background loop after an unexpected error instead of losing it."""
        loop = asyncio.get_running_loop()
        backoff = ExponentialBackoff(RESTART_BASE, RESTART_CAP)
        while True:
            began = loop.time()
            try:
                await body()
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # a dead heartbeat or rescuer would be silent
                if loop.time() - began >= RESTART_CAP:
                    backoff.ok()
                delay = backoff.failed()
                log.exception("%s failed; restarting it in %gs", name, delay)
                await asyncio.sleep(delay)

    async def _settle_threads(self) -> None:
        """Wait for database calls still running on threads (the run was cancelled mid-call).

        A cancelled ``await`` does not stop the thread under it. Its connection
        must go back to the pool before the caller disposes the engines:
        returned to a disposed pool it would never be closed. Jobs a claim
        took for nobody are rescued when their leases expire, as after a crash.
        """
        try:
            await self.threads.settle(self.options.lease_seconds)
        except asyncio.CancelledError:  # cancelled again: stop waiting, as asked
            log.warning("worker %s stopped before its database calls returned", self.worker_id)
            raise

    def _source_gone(self, key: str) -> None:
        self._producer.forget_source(key)
        self._wakeups.unwatch(key)
        self._leases.abandon(key)

    # -- shutdown ---------------------------------------------------------------------
    async def _drain(self) -> None:
        """Let running jobs finish within the grace period, then hand the rest back."""
        state, grace = self._state, self.options.shutdown_grace
        buffered = state.buffer.clear()
        await self._completer.release(buffered)
        pending: set[asyncio.Future[Any]] = {
            h.task for h in state.held.values() if h.task is not None and not h.task.done()
        }
        if pending and not state.hard_stop:
            loop = asyncio.get_running_loop()
            log.info("waiting up to %gs for %d running job(s)", grace, len(pending))
            hard: asyncio.Future[Any] = asyncio.ensure_future(state.hard.wait())
            deadline = loop.time() + grace
            while pending and not hard.done():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                _, pending = await asyncio.wait(
                    pending | {hard}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(hard)
            hard.cancel()
        unfinished = [
            h
            for h in state.held.values()
            if h.task is not None and not h.task.done() and not h.done
        ]
        for held in unfinished:
            assert held.task is not None
            held.task.cancel()
        await asyncio.gather(*(h.task for h in unfinished if h.task), return_exceptions=True)
        await self._completer.flush(final=True)
        await self._completer.release(unfinished)


def _freeze_heap() -> None:
    """Take every object alive now out of the cyclic garbage collector's reach.

    Process-wide (``gc.freeze()``), so only on request (``freeze_gc``; the
    ``tenantry worker`` and ``tenantry serve`` commands ask, their process is
    tenantry's). A worker's jobs are short-lived allocations that outlive a
    few young collections while buffered, and their promotion makes Python
    run full collections, which traverse the whole heap: modules, SQLAlchemy's
    and pydantic's machinery, the application; each stops the event loop and
    the claim thread (measured: see docs/performance.md). Objects frozen are
    still freed when their last reference goes; only a reference cycle among
    them is never collected, so garbage is collected first.
    """
    gc.collect()
    gc.freeze()

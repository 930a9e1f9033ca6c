"""The worker's threads: job handlers, the claim thread, and its own blocking calls.

Every blocking call the worker makes goes through here, tracked, so that a
run that is cancelled can wait for the calls still holding connections.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import copy_context
from typing import Any, TypeVar

T = TypeVar("T")


class WorkerThreads:
    """Three pools: sync handlers, claims, and catalog reads / control-row writes."""

    def __init__(self, concurrency: int) -> None:
        self._jobs = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="tenantry-job")
        # Claims run on one thread of their own (see Store.claim_engine): a
        # claim's round trips then do not each wait for a turn of a busy loop.
        self._claimer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tenantry-claim")
        self._claim_future: Future[Any] | None = None
        # Catalog reads and control-row writes (offload): their threads are
        # tracked so that run() returns only once none holds a connection.
        self._io = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tenantry-io")
        self._offloaded: set[Future[Any]] = set()
        self._busy = 0
        self._busy_lock = threading.Lock()

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """``asyncio.to_thread`` for the worker's own blocking calls, tracked."""
        future = self._io.submit(copy_context().run, fn, *args)
        self._offloaded.add(future)
        future.add_done_callback(self._offloaded.discard)
        return await asyncio.wrap_future(future)

    async def claim(self, transaction: Callable[[], T]) -> T:
        """Run a claim transaction on the claim thread."""
        future = self._claimer.submit(transaction)
        self._claim_future = future
        return await asyncio.wrap_future(future)

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a sync handler on a job thread."""
        # copy_context: the thread sees this task's tenant, and nothing leaks back.
        ctx = copy_context()

        def call() -> T:
            with self._busy_lock:
                self._busy += 1
            try:
                return ctx.run(fn, *args)
            finally:
                with self._busy_lock:
                    self._busy -= 1

        return await asyncio.get_running_loop().run_in_executor(self._jobs, call)

    @property
    def busy(self) -> int:
        """Sync handlers still running in threads (they cannot be interrupted)."""
        with self._busy_lock:
            return self._busy

    def pending(self) -> list[Future[Any]]:
        """Database calls (claims, offloaded calls) not returned yet."""
        calls = [*list(self._offloaded)]
        if self._claim_future is not None:
            calls.append(self._claim_future)
        return [f for f in calls if not f.done()]

    async def settle(self, timeout: float) -> bool:
        """Wait up to *timeout* for the pending calls; True if none is left."""
        waiting = {asyncio.wrap_future(f) for f in self.pending()}
        if not waiting:
            return True
        _, left = await asyncio.wait(waiting, timeout=timeout)
        return not left

    def shutdown(self) -> None:
        """Start no more work on any pool; threads running now finish on their own."""
        self._jobs.shutdown(wait=False, cancel_futures=True)
        self._claimer.shutdown(wait=False, cancel_futures=True)
        self._io.shutdown(wait=False, cancel_futures=True)

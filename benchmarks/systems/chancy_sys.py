"""chancy (psycopg 3 pool, AsyncExecutor); run with benchmarks/.venv-peers.

Profile ``10``: the queue declared with ``concurrency=10`` and chancy's asyncio
executor (``Chancy.Executor.Async``, the documented choice for async, I/O-bound
jobs); notifications (LISTEN/NOTIFY) on, as by default, and ``eager_polling``. Bulk enqueue is
``Chancy.push_many`` (one call; chancy commits in batches of its default 1,000);
single enqueue is ``Chancy.push``. Finished jobs stay as ``succeeded``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from chancy import Chancy, Queue, Worker, job

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RECORDER, main

# eager_polling: fetch again as soon as a job finishes instead of after
# polling_interval (5 s): chancy documents it for queues with continuous work;
# without it one worker ran 10 jobs per 5 s here.
PROFILES: dict[str, dict[str, Any]] = {"10": {"concurrency": 10, "eager_polling": True}}

# chancy logs every job at INFO on its own handler; the others log nothing per job.
LOG = logging.getLogger("bench.chancy")
LOG.setLevel(logging.WARNING)
LOG.addHandler(logging.StreamHandler())
LOG.propagate = False


def _chancy(dsn: str) -> Chancy:
    return Chancy(dsn, log=LOG)


@job()
async def noop(n: int, sent: float = 0.0) -> None:
    RECORDER.started(sent)


class ChancySystem:
    name = "chancy"

    async def setup(self, dsn: str, args: argparse.Namespace) -> None:
        async with _chancy(dsn) as chancy:
            await chancy.migrate()
            await chancy.declare(
                Queue("default", executor=Chancy.Executor.Async, **PROFILES[args.profile]),
                upsert=True,
            )

    async def bulk(
        self, dsn: str, n: int, args: argparse.Namespace
    ) -> Callable[[], Awaitable[Any]]:
        chancy = _chancy(dsn)
        await chancy.__aenter__()
        jobs = [noop.job.with_kwargs(n=i) for i in range(n)]

        async def timed() -> None:
            try:
                async for _ in chancy.push_many(jobs):
                    pass
            finally:
                await chancy.__aexit__(None, None, None)

        return timed

    async def single(
        self, dsn: str, args: argparse.Namespace
    ) -> tuple[Callable[[int, float], Awaitable[Any]], Callable[[], Awaitable[Any]]]:
        chancy = _chancy(dsn)
        await chancy.__aenter__()

        async def enqueue(i: int, sent: float) -> None:
            await chancy.push(noop.job.with_kwargs(n=i, sent=sent))

        async def close() -> None:
            await chancy.__aexit__(None, None, None)

        return enqueue, close

    async def work(
        self, dsn: str, profile: str, ready: Callable[[], None], stop: asyncio.Event
    ) -> None:
        async with _chancy(dsn) as chancy:
            worker = Worker(chancy, register_signal_handlers=False)
            await worker.start()
            ready()
            await stop.wait()
            await worker.stop()


if __name__ == "__main__":
    sys.exit(main(ChancySystem(), list(PROFILES)))

"""pgqueuer (asyncpg driver, as its documentation recommends); run with benchmarks/.venv-peers.

Profiles:
  ``10``        one QueueManager capped at 10 jobs in flight
                (``max_concurrent_tasks=10``; pgqueuer requires it to be at
                least twice ``batch_size``, hence ``batch_size=5``).
  ``defaults``  ``QueueManager.run()`` at its library defaults
                (``batch_size=10``, no cap on jobs in flight).
Bulk enqueue is one ``Queries.enqueue`` call with lists (one multi-row INSERT).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RECORDER, main

PROFILES: dict[str, dict[str, Any]] = {
    "10": {"batch_size": 5, "max_concurrent_tasks": 10},
    "defaults": {},
}


def _payload(n: int, sent: float) -> bytes:
    return json.dumps({"n": n, "sent": sent}).encode()


class PgqueuerSystem:
    name = "pgqueuer"

    async def setup(self, dsn: str, args: argparse.Namespace) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await Queries(AsyncpgDriver(conn)).install()
        finally:
            await conn.close()

    async def bulk(
        self, dsn: str, n: int, args: argparse.Namespace
    ) -> Callable[[], Awaitable[Any]]:
        conn = await asyncpg.connect(dsn)
        queries = Queries(AsyncpgDriver(conn))
        names = ["noop"] * n
        payloads: list[bytes | None] = [_payload(i, 0.0) for i in range(n)]
        priorities = [0] * n

        async def timed() -> None:
            try:
                await queries.enqueue(names, payloads, priorities)
            finally:
                await conn.close()

        return timed

    async def single(
        self, dsn: str, args: argparse.Namespace
    ) -> tuple[Callable[[int, float], Awaitable[Any]], Callable[[], Awaitable[Any]]]:
        conn = await asyncpg.connect(dsn)
        queries = Queries(AsyncpgDriver(conn))

        async def enqueue(i: int, sent: float) -> None:
            await queries.enqueue("noop", _payload(i, sent))

        async def close() -> None:
            await conn.close()

        return enqueue, close

    async def work(
        self, dsn: str, profile: str, ready: Callable[[], None], stop: asyncio.Event
    ) -> None:
        conn = await asyncpg.connect(dsn)
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint("noop")
        async def noop(job: Job) -> None:
            RECORDER.started(json.loads(job.payload or b"{}").get("sent"))

        async def stopper() -> None:
            await stop.wait()
            qm.shutdown.set()

        stopping = asyncio.create_task(stopper())
        loop = asyncio.get_running_loop()
        loop.call_later(0.5, ready)  # run() installs its LISTEN right away
        try:
            await qm.run(**PROFILES[profile])
        finally:
            stopping.cancel()
            if not conn.is_closed():
                await conn.close()


if __name__ == "__main__":
    sys.exit(main(PgqueuerSystem(), list(PROFILES)))

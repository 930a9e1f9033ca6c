"""procrastinate (PsycopgConnector, async tasks); run with benchmarks/.venv-peers.

Profile ``10``: ``run_worker_async(concurrency=10)``, LISTEN/NOTIFY on (its
default). Bulk enqueue is ````batch_defer_async`` (one call for all jobs);
single enqueue is ``defer_async`` (both through ``App.configure_task``, the
task's own API bound to this process's connection). procrastinate keeps finished jobs
(status ``succeeded``) unless told to delete them; the verification counts them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from procrastinate import App, PsycopgConnector

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RECORDER, main

PROFILES: dict[str, dict[str, Any]] = {"10": {"concurrency": 10}}

# procrastinate binds tasks to one App, built at import with this run's DSN
# (the second command-line argument, as _common's parser reads it).
DSN = sys.argv[2] if len(sys.argv) > 2 else ""
app = App(connector=PsycopgConnector(conninfo=DSN))


@app.task(name="noop")
async def noop(n: int, sent: float = 0.0) -> None:
    RECORDER.started(sent)


def _app(dsn: str) -> App:
    assert dsn == DSN
    return app


class ProcrastinateSystem:
    name = "procrastinate"

    async def setup(self, dsn: str, args: argparse.Namespace) -> None:
        async with _app(dsn).open_async() as a:
            await a.schema_manager.apply_schema_async()

    async def bulk(
        self, dsn: str, n: int, args: argparse.Namespace
    ) -> Callable[[], Awaitable[Any]]:
        a = _app(dsn)
        await a.open_async()
        await a.check_connection_async()
        deferrer = a.configure_task("noop")
        kwargs = [{"n": i} for i in range(n)]

        async def timed() -> None:
            try:
                await deferrer.batch_defer_async(*kwargs)
            finally:
                await a.close_async()

        return timed

    async def single(
        self, dsn: str, args: argparse.Namespace
    ) -> tuple[Callable[[int, float], Awaitable[Any]], Callable[[], Awaitable[Any]]]:
        a = _app(dsn)
        await a.open_async()
        await a.check_connection_async()
        deferrer = a.configure_task("noop")

        async def enqueue(i: int, sent: float) -> None:
            await deferrer.defer_async(n=i, sent=sent)

        async def close() -> None:
            await a.close_async()

        return enqueue, close

    async def work(
        self, dsn: str, profile: str, ready: Callable[[], None], stop: asyncio.Event
    ) -> None:
        async with _app(dsn).open_async() as a:
            run = asyncio.create_task(
                a.run_worker_async(install_signal_handlers=False, **PROFILES[profile])
            )
            asyncio.get_running_loop().call_later(0.5, ready)
            waiter = asyncio.create_task(stop.wait())
            await asyncio.wait({run, waiter}, return_when=asyncio.FIRST_COMPLETED)
            run.cancel()
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run


if __name__ == "__main__":
    sys.exit(main(ProcrastinateSystem(), list(PROFILES)))

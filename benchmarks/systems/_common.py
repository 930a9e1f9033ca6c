"""What every system's benchmark driver shares (standard library only).

Each ``<system>_sys.py`` is a small command-line program run by ``suite.py``
in its own process, with the Python of the environment that has the system
installed (the project's ``.venv`` for tenantry, ``benchmarks/.venv-peers``
for the peers). It implements :class:`System` and calls :func:`main`::

    python <system>_sys.py setup   DSN
    python <system>_sys.py bulk    DSN --jobs N        # prints {"seconds": ...}
    python <system>_sys.py single  DSN --jobs N        # one transaction per job
    python <system>_sys.py produce DSN --jobs N --interval S   # latency probes
    python <system>_sys.py work    DSN --out FILE --ready FILE --profile P

``work`` runs one worker until SIGTERM/SIGINT, then writes the handler-start
record (:class:`Recorder`) to ``--out``. Every handler calls
:meth:`Recorder.started` first thing, with the probe's send time if it has one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol


class Recorder:
    """Handler-start wall-clock times (and enqueue-to-start latency of probes)."""

    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.latencies: list[float] = []

    def started(self, sent: float | None = None) -> None:
        now = time.time()
        if self.count == 0:
            self.first = now
        self.last = now
        self.count += 1
        if sent:
            self.latencies.append((now - sent) * 1000.0)

    def dump(self, path: str, **extra: Any) -> None:
        data = {
            "count": self.count,
            "first": self.first,
            "last": self.last,
            "latencies_ms": self.latencies,
            **extra,
        }
        Path(path).write_text(json.dumps(data))


RECORDER = Recorder()


class System(Protocol):
    """One queue library driven the same way as every other."""

    name: str

    async def setup(self, dsn: str, args: argparse.Namespace) -> None: ...

    async def bulk(
        self, dsn: str, n: int, args: argparse.Namespace
    ) -> Callable[[], Awaitable[Any]]:
        """Prepare (connect, build payloads) and return the timed part."""
        ...

    async def single(
        self, dsn: str, args: argparse.Namespace
    ) -> tuple[Callable[[int, float], Awaitable[Any]], Callable[[], Awaitable[Any]]]:
        """Return (enqueue one job with payload (n, sent), close)."""
        ...

    async def work(
        self, dsn: str, profile: str, ready: Callable[[], None], stop: asyncio.Event
    ) -> None:
        """Run one worker until *stop* is set; call *ready* once it is listening."""
        ...


def _parser(profiles: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["setup", "bulk", "single", "produce", "work"])
    parser.add_argument("dsn")
    parser.add_argument("--jobs", type=int, default=0)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--out", default="")
    parser.add_argument("--ready", default="")
    parser.add_argument("--profile", choices=profiles, default=profiles[0])
    parser.add_argument("--kind", default="noop")
    parser.add_argument("--tenants", type=int, default=0)
    return parser


async def _run(system: System, args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "setup":
        await system.setup(args.dsn, args)
        return {}
    if args.command == "bulk":
        timed = await system.bulk(args.dsn, args.jobs, args)
        start = time.perf_counter()
        await timed()
        return {"seconds": time.perf_counter() - start}
    if args.command in ("single", "produce"):
        enqueue, close = await system.single(args.dsn, args)
        try:
            if args.command == "single":
                start = time.perf_counter()
                for i in range(args.jobs):
                    await enqueue(i, 0.0)
                return {"seconds": time.perf_counter() - start}
            # Probes: one job every `interval` seconds, each carrying its send time.
            next_at = time.monotonic()
            for i in range(args.jobs):
                await enqueue(i, time.time())
                next_at += args.interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            return {}
        finally:
            await close()
    # work
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def ready() -> None:
        if args.ready:
            Path(args.ready).write_text(str(time.time()))

    await system.work(args.dsn, args.profile, ready, stop)
    RECORDER.dump(args.out)
    return {}


def main(system: System, profiles: list[str]) -> int:
    args = _parser(profiles).parse_args()
    result = asyncio.run(_run(system, args))
    if result:
        print(json.dumps(result))
    sys.stdout.flush()
    return 0

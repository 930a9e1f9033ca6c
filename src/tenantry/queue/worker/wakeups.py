"""Wake-ups: what tells the claim loop that jobs arrived, before its next poll.

PostgreSQL store databases: a LISTEN connection per database (enqueues
NOTIFY). SQLite: an in-process signal fired when an enqueue commits. A
tenant database on PostgreSQL has no listener; it is polled adaptively. Nor
has a store behind a transaction-mode pooler (``pooler = "transaction"``):
LISTEN holds a session, which such a pooler does not keep, so notifications
would go to a server connection nobody reads; its sources are polled.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from tenantry.backoff import ExponentialBackoff
from tenantry.errors import DB_ERRORS
from tenantry.queue.drivers.postgres import CHANNEL
from tenantry.queue.drivers.sqlite import wakeups
from tenantry.queue.sources import JobSource
from tenantry.queue.worker.observe import short_error
from tenantry.queue.worker.state import Runtime
from tenantry.tenancy.logs import get_logger

log = get_logger(__name__)


class Wakeups:
    """The listeners and subscriptions of one worker's sources."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._state = rt.state
        self._listeners: dict[str, asyncio.Task[None]] = {}
        self._unsubscribe: list[Callable[[], None]] = []
        self._reconnect = ExponentialBackoff(0.5, 30.0)
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Stores already reported as polled because of their pooler.
        self._pooled_noted: set[str] = set()

    def watch(self, source: JobSource) -> None:
        """Start waking the claim loop for *source* (called on the event loop)."""
        self._loop = asyncio.get_running_loop()
        if source.store.is_postgres:
            if source.store.config.transaction_pooled:
                self._note_pooled(source)
            elif (
                self._rt.options.listen
                and source.tenant_id is None
                and source.key not in self._listeners
            ):
                self._listeners[source.key] = asyncio.create_task(
                    self._listen(source), name=f"tenantry-listen-{source.key}"
                )
        else:
            db = source.engine().url.database or ""
            self._unsubscribe.append(
                wakeups.subscribe(db, functools.partial(self._wake_threadsafe, source.key))
            )

    def _note_pooled(self, source: JobSource) -> None:
        """Say once per store that it is polled, not listened to, and why."""
        name = source.store.name
        if name in self._pooled_noted:
            return
        self._pooled_noted.add(name)
        log.info(
            "store %s is behind a transaction pooler: "
            "polling for jobs every %g s instead of LISTEN",
            name,
            self._rt.options.poll_interval,
        )

    def unwatch(self, key: str) -> None:
        listener = self._listeners.pop(key, None)
        if listener is not None:
            listener.cancel()

    def tasks(self) -> list[asyncio.Task[None]]:
        """The LISTEN tasks running now."""
        return list(self._listeners.values())

    def close(self) -> None:
        """Stop listening (the tasks are cancelled; the caller awaits them)."""
        for task in self._listeners.values():
            task.cancel()

    def unsubscribe(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()

    def _wake_threadsafe(self, key: str | None = None) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._state.wake_source, key)

    async def _listen(self, source: JobSource) -> None:
        import psycopg  # the 'postgres' extra; only PostgreSQL sources listen

        lost: tuple[type[BaseException], ...] = (*DB_ERRORS, psycopg.Error)  # a raw connection
        url = source.engine().url.set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        key = source.key
        state = self._state
        while not state.stopping:
            try:
                conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._reconnect.ok(key)
                    state.wake_source(key)  # catch up on what came while away
                    async for _ in conn.notifies():
                        state.wake_source(key)
            except asyncio.CancelledError:
                raise
            except lost as exc:
                log.warning(
                    "LISTEN on %s lost (%s); polling until it is back", key, short_error(exc)
                )
                await asyncio.sleep(self._reconnect.failed(key))

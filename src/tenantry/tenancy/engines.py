"""The engines of one store, each kept under a named role, and their disposal.

A store keeps at most one engine per role on its own database, and one per
role and tenant on database-per-tenant databases, in two bounded LRUs (sync
and async), so a thousand tenants never mean a thousand open pools. Roles are
named by whoever needs the engine: tenancy's own are below; the queue names
its claim, enqueue and worker engines itself, so tenancy need not know them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Engine, event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

E = TypeVar("E", Engine, AsyncEngine)
T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class EngineRole(Generic[E]):
    """What an engine is for; one engine per role and database.

    Roles are module constants, compared by identity (a cheap hash: one is
    looked up at every use of an engine).
    """

    name: str
    is_async: bool = False


#: Tenant sessions (``url``).
APP: EngineRole[Engine] = EngineRole("app")
#: Catalog, DDL and provisioning (``admin_url``).
ADMIN: EngineRole[Engine] = EngineRole("admin")
#: Async tenant and global sessions (``url``).
ASYNC_APP: EngineRole[AsyncEngine] = EngineRole("async app", is_async=True)


class EngineLRU(Generic[T]):
    """A small thread-safe LRU that disposes what it evicts."""

    def __init__(self, capacity: int, dispose: Callable[[T], None]) -> None:
        self.capacity = capacity
        self._dispose = dispose
        self._items: OrderedDict[Hashable, T] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_create(self, key: Hashable, factory: Callable[[], T]) -> T:
        evicted: list[T] = []
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                return item
            item = factory()
            self._items[key] = item
            while len(self._items) > self.capacity:
                _, old = self._items.popitem(last=False)
                evicted.append(old)
        for old in evicted:
            self._dispose(old)
        return item

    def pop_where(self, matches: Callable[[Hashable], bool]) -> list[T]:
        with self._lock:
            keys = [k for k in self._items if matches(k)]
            return [self._items.pop(k) for k in keys]

    def clear(self) -> list[T]:
        with self._lock:
            items = list(self._items.values())
            self._items.clear()
        return items

    def __len__(self) -> int:
        return len(self._items)


def _close_on_return(dbapi_connection: Any, record: Any) -> None:
    record.close()


def retire(engine: Engine) -> None:
    """``Engine.dispose``, and a connection checked out at the time is closed when returned.

    ``dispose`` closes only the connections in the pool. One checked out then
    (a worker's thread in the middle of a query, a tenant database dropped
    under a running worker) goes back to the old pool, which nothing reads
    again: it would stay open until the garbage collector found it. The new
    pool is made first, so the old one gets the closing listener alone.
    """
    old = engine.pool
    engine.pool = old.recreate()
    event.listen(old, "checkin", _close_on_return)
    old.dispose()


async def aretire(engine: AsyncEngine) -> None:
    """``retire`` for an async engine (closing its connections awaits the driver)."""
    await greenlet_spawn(retire, engine.sync_engine)


#: Retirements under way on some loop. Module-wide, not per store: a task must
#: outlive the store that started it (the loop keeps only weak references).
_PENDING_DISPOSALS: set[asyncio.Task[None]] = set()


class StoreEngines:
    """Every engine of one store, by role; made on first use by the caller's factory."""

    def __init__(self, tenant_capacity: int) -> None:
        # Re-entrant: making one engine may need another (the app engine's URL
        # needs the session login, which the admin engine sets up).
        self._lock = threading.RLock()
        self._own: dict[EngineRole[Any], Any] = {}
        self.tenant_sync: EngineLRU[Engine] = EngineLRU(tenant_capacity, retire)
        self.tenant_async: EngineLRU[AsyncEngine] = EngineLRU(
            tenant_capacity, self._schedule_dispose
        )
        #: The loop each async engine was made on (its connections are that loop's).
        self._loops: weakref.WeakKeyDictionary[Engine, asyncio.AbstractEventLoop] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, role: EngineRole[E], make: Callable[[], E]) -> E:
        """The store database's engine for *role*."""
        with self._lock:
            engine: E | None = self._own.get(role)
            if engine is None:
                engine = self._made(make())
                self._own[role] = engine
            return engine

    def tenant(self, role: EngineRole[E], tenant_id: str, make: Callable[[], E]) -> E:
        """The engine for *role* on a tenant's own database (LRU-bounded)."""
        lru: EngineLRU[Any] = self.tenant_async if role.is_async else self.tenant_sync
        engine: E = lru.get_or_create((tenant_id, role), lambda: self._made(make()))
        return engine

    def _made(self, engine: E) -> E:
        if isinstance(engine, AsyncEngine):
            with contextlib.suppress(RuntimeError):  # made outside a loop: no home loop
                self._loops[engine.sync_engine] = asyncio.get_running_loop()
        return engine

    def _schedule_dispose(self, engine: AsyncEngine) -> None:
        """Retire an async engine from sync code, on the loop its connections belong to.

        From that loop's thread the retirement is a task on it. From another
        thread (``delete_tenant`` run by ``asyncio.to_thread`` while a worker
        uses the tenant's database) it is sent to that loop, if it still runs.
        Without a loop the connections cannot be closed (closing awaits the
        driver), so the pool is only let go.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            home = self._loops.get(engine.sync_engine)
            if home is not None and home.is_running():
                asyncio.run_coroutine_threadsafe(aretire(engine), home)
            else:
                engine.sync_engine.dispose(close=False)
            return
        task = loop.create_task(aretire(engine))
        _PENDING_DISPOSALS.add(task)
        task.add_done_callback(_PENDING_DISPOSALS.discard)

    def forget_tenant(self, tenant_id: str) -> None:
        """Dispose every cached engine on one tenant's database (before dropping it)."""

        def of_tenant(key: Hashable) -> bool:
            return isinstance(key, tuple) and key[0] == tenant_id

        for engine in self.tenant_sync.pop_where(of_tenant):
            retire(engine)
        for async_engine in self.tenant_async.pop_where(of_tenant):
            self._schedule_dispose(async_engine)

    def _take_own(self) -> tuple[list[Engine], list[AsyncEngine]]:
        with self._lock:
            own = list(self._own.values())
            self._own.clear()
        return (
            [e for e in own if not isinstance(e, AsyncEngine)],
            [e for e in own if isinstance(e, AsyncEngine)],
        )

    def dispose(self) -> None:
        sync, async_ = self._take_own()
        for engine in sync:
            retire(engine)
        for engine in self.tenant_sync.clear():
            retire(engine)
        for async_engine in self.tenant_async.clear():
            self._schedule_dispose(async_engine)
        for async_engine in async_:
            self._schedule_dispose(async_engine)

    async def adispose(self) -> None:
        """Dispose everything, awaiting the async engines (call from the event loop)."""
        sync, async_ = self._take_own()
        for async_engine in self.tenant_async.clear() + async_:
            await aretire(async_engine)
        for engine in sync:
            retire(engine)
        for engine in self.tenant_sync.clear():
            retire(engine)

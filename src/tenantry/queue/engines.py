"""The queue's own engines on a store: claims, standalone enqueues, the async worker.

Kept by the store's ``StoreEngines`` under the queue's roles, so they are
disposed with the store and, for a tenant's own database, forgotten with it.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantry.queue.drivers.postgres import (
    CLAIM_SESSION_OPTIONS,
    GENERIC_PLANS,
    SETTINGS_PER_TRANSACTION,
)
from tenantry.tenancy.engines import EngineRole
from tenantry.tenancy.store import Store

#: The worker's claim transactions on the store database.
CLAIM: EngineRole[Engine] = EngineRole("queue claim")
#: Standalone enqueues (the store database, or a tenant's own).
ENQUEUE: EngineRole[Engine] = EngineRole("queue enqueue")
#: The worker's async work and async enqueues (the store database, or a tenant's own).
QUEUE_ASYNC: EngineRole[AsyncEngine] = EngineRole("queue async", is_async=True)

#: A pooled connection unused for this long is pinged before it is handed out.
PING_AFTER_IDLE = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """Pre-ping only connections that sat idle in the pool (``PING_AFTER_IDLE``).

    Only for standalone enqueues (``enqueue_engine``). SQLAlchemy's
    ``pool_pre_ping`` pings on every checkout, which made such an enqueue two
    round trips instead of one. A connection used within the last second is
    as good as pinged. The one a restart or ``pg_terminate_backend`` broke in
    between fails its statement; SQLAlchemy then sees the disconnect and
    replaces it, and the caller gets ``QueueUnavailableError`` (retry, with an
    idempotency key to be safe), never a silent loss. Sessions keep the full
    pre-ping: a web request after a failover should not fail.
    """

    @event.listens_for(engine, "connect")
    def fresh(dbapi_connection: Any, record: Any) -> None:
        record.info["tenantry_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def returned(dbapi_connection: Any, record: Any) -> None:
        record.info["tenantry_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("tenantry_idle_since")
        if since is not None and time.monotonic() - since < PING_AFTER_IDLE:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool discards this connection and checks out another one.
            raise DisconnectionError(f"pooled connection is dead: {exc}") from exc


def _idle_pinged(engine: Engine) -> Engine:
    _ping_when_idle(engine)
    return engine


def claim_engine(store: Store) -> Engine:
    """The worker's claim engine on the store database: generic plans, small pool.

    The fair claim statement costs more to plan than to run, so its
    connections plan each prepared statement once
    (``plan_cache_mode=force_generic_plan``; see ``CLAIM_SESSION_SETTINGS``
    for the rest). Only statements whose partial-index predicates are
    literals run here (claims and their acknowledgements); a generic plan
    cannot match a partial index against a bound parameter. SQLite has no
    plans to cache: the admin engine serves.

    Sync, because the worker claims from a thread of its own: a claim is
    several round trips (BEGIN, acknowledgements, the claim, COMMIT), and on
    the event loop each of them waited for a busy loop's next turn (measured:
    see docs/performance.md).
    """
    if not store.is_postgres:
        return store.admin_engine()
    if store.config.transaction_pooled:
        # A transaction pooler refuses startup ``options`` and would lose
        # session settings anyway: each claim transaction sets them for
        # itself (``PostgresDriver.claim_connection``).
        return store.engines.get(
            CLAIM,
            lambda: store.make_engine(
                store.url(admin=True, is_async=False), small=True, ping=False
            ).execution_options(**{SETTINGS_PER_TRANSACTION: True}),
        )
    return store.engines.get(
        CLAIM,
        lambda: store.make_engine(
            store.url(admin=True, is_async=False),
            small=True,
            ping=False,
            connect_args={"options": CLAIM_SESSION_OPTIONS},
        ).execution_options(**{GENERIC_PLANS: True}),
    )


def enqueue_engine(store: Store, tenant_id: str | None = None) -> Engine:
    """The engine of standalone enqueues: admin, pinging only idle connections.

    A standalone enqueue on PostgreSQL is one autocommitted statement; a
    pre-ping on every checkout would double its round trips. See
    ``_ping_when_idle`` for what that trades.
    """
    if not store.is_postgres:  # no round trips to save
        if tenant_id is None:
            return store.admin_engine()
        return store.tenant_engine(tenant_id, admin=True)
    admin = True  # the worker claims across tenants: never as the session login
    if tenant_id is not None:
        store.tenant_database_name(tenant_id)  # refused before anything is cached
        return store.engines.tenant(
            ENQUEUE,
            tenant_id,
            lambda: _idle_pinged(
                store.make_engine(store.tenant_url(tenant_id, admin=admin), small=True, ping=False)
            ),
        )
    return store.engines.get(
        ENQUEUE,
        lambda: _idle_pinged(store.make_engine(store.url(admin=admin, is_async=False), ping=False)),
    )


def queue_async_engine(store: Store, tenant_id: str | None = None) -> AsyncEngine:
    """The queue worker's engine (store database, or a tenant's own): admin, no pre-ping.

    Pre-ping costs a round trip per checkout, on every claim and
    acknowledgement. The worker does not need it: an operation that meets a
    dead connection fails, SQLAlchemy invalidates the pool, and the worker
    retries with backoff.
    """
    admin = True  # the worker claims across tenants: never as the session login
    if tenant_id is not None:
        store.tenant_database_name(tenant_id)  # refused before anything is cached
        return store.engines.tenant(
            QUEUE_ASYNC,
            tenant_id,
            lambda: store.make_async_engine(
                store.tenant_url(tenant_id, admin=admin, is_async=True), small=True, ping=False
            ),
        )
    return store.engines.get(
        QUEUE_ASYNC,
        lambda: store.make_async_engine(store.url(admin=admin, is_async=True), ping=False),
    )

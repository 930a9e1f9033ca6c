"""Push invalidation of catalog caches: LISTEN/NOTIFY on the catalog database (PostgreSQL).

Every process caches catalog entries and API keys for ``catalog_cache_ttl``
seconds. Left alone, a suspend, delete or move made by one process would take
effect in the others only when their entries expire. On PostgreSQL, triggers
on the catalog tables ``NOTIFY`` one channel with the changed tenant's (or
key's) id in the changing transaction, so the notification is delivered on
commit and never for a change rolled back; triggers rather than calls in
each write path, so that no writer (a move's step, a cascade, an edit made
by hand in ``psql``) can forget to notify. Each process keeps one ``LISTEN``
connection in a daemon thread and drops the named entries as notifications
arrive: milliseconds after the commit instead of up to the TTL.

The TTL stays as the fallback. When the listening connection is lost the
process drops every entry (notifications may have been missed), logs, and
reconnects with back-off; until it is back, entries expire by TTL as before.
SQLite has no NOTIFY (and its processes share one machine, not a server), so
there nothing listens. Neither does a process whose catalog store is reached
through a transaction-mode pooler: ``LISTEN`` needs a session of its own.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Table, text

from tenantry.backoff import ExponentialBackoff
from tenantry.tenancy.logs import get_logger

if TYPE_CHECKING:
    from tenantry.tenancy.store import Store

log = get_logger(__name__)

#: The channel catalog changes are notified on (in the catalog database).
CHANNEL = "tenantry_catalog"
#: The payload that means "drop every entry" (``TRUNCATE`` of a catalog table).
EVERYTHING = "*"
#: Payload prefixes: a tenant's id, an API key's public id (both may look alike).
TENANT_PREFIX = "t:"
KEY_PREFIX = "k:"

#: How long, at most, a committed catalog change is taken to reach every listening
#: process and drop its entries (delivery is milliseconds; this leaves a margin for
#: a busy process's thread to be scheduled). What a move waits instead of the TTL.
PUSH_SETTLE_SECONDS = 0.2

_FUNCTION = "tenantry_catalog_notify"
_TENANT_TRIGGER = "tenantry_catalog_notify"
_TRUNCATE_TRIGGER = "tenantry_catalog_notify_all"
_KEY_REVOKED_TRIGGER = "tenantry_api_key_revoked"
_KEY_DELETED_TRIGGER = "tenantry_api_key_deleted"

#: How often the listening thread wakes with nothing to do (to notice a stop request
#: that could not wake it, and to let TCP keepalives find a dead server).
_IDLE_WAKE = 5.0
#: How long the first use of the catalog waits for the listening connection.
_FIRST_CONNECT_WAIT = 1.0


def install_triggers(conn: Connection, tenants: Table, api_keys: Table) -> None:
    """Create the notifying triggers on the catalog tables if they are missing.

    Run in the transaction that creates the catalog (under its advisory lock),
    so processes starting together do not race. Checked first, created only
    when missing: ``CREATE TRIGGER`` locks the table against writes, which a
    process start should not do to a busy catalog every time.
    """
    prep = conn.dialect.identifier_preparer
    schema = prep.quote_schema(tenants.schema or "public")
    tenants_name = f"{schema}.{prep.quote(tenants.name)}"
    keys_name = f"{prep.quote_schema(api_keys.schema or 'public')}.{prep.quote(api_keys.name)}"
    present = conn.execute(
        text(
            "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND ("
            "(tgrelid = to_regclass(:tenants) AND tgname IN (:t1, :t2)) OR "
            "(tgrelid = to_regclass(:keys) AND tgname IN (:k1, :k2)))"
        ),
        {
            "tenants": tenants_name,
            "keys": keys_name,
            "t1": _TENANT_TRIGGER,
            "t2": _TRUNCATE_TRIGGER,
            "k1": _KEY_REVOKED_TRIGGER,
            "k2": _KEY_DELETED_TRIGGER,
        },
    ).scalar_one()
    if present == 4:
        return
    function = f"{schema}.{prep.quote(_FUNCTION)}"
    # The prefix is the trigger's argument; the id column is ``id`` in both tables.
    conn.exec_driver_sql(
        f"""CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify('{CHANNEL}', '{EVERYTHING}');
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('{CHANNEL}', TG_ARGV[0] || OLD.id);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.id IS DISTINCT FROM OLD.id) THEN
        PERFORM pg_notify('{CHANNEL}', TG_ARGV[0] || NEW.id);
    END IF;
    RETURN NULL;
END
$fn$"""
    )
    statements = [
        (
            _TENANT_TRIGGER,
            tenants_name,
            "AFTER INSERT OR UPDATE OR DELETE",
            f"FOR EACH ROW EXECUTE FUNCTION {function}('{TENANT_PREFIX}')",
        ),
        (
            _TRUNCATE_TRIGGER,
            tenants_name,
            "AFTER TRUNCATE",
            f"FOR EACH STATEMENT EXECUTE FUNCTION {function}('')",
        ),
        # Only revocation matters to a cache of keys (recording use does not):
        # the WHEN keeps ``last_used_at`` updates quiet.
        (
            _KEY_REVOKED_TRIGGER,
            keys_name,
            "AFTER UPDATE OF revoked_at",
            "FOR EACH ROW WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at) "
            f"EXECUTE FUNCTION {function}('{KEY_PREFIX}')",
        ),
        (
            _KEY_DELETED_TRIGGER,
            keys_name,
            "AFTER DELETE",
            f"FOR EACH ROW EXECUTE FUNCTION {function}('{KEY_PREFIX}')",
        ),
    ]
    for name, table, when, action in statements:
        trigger = prep.quote(name)
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
        conn.exec_driver_sql(f"CREATE TRIGGER {trigger} {when} ON {table} {action}")


def push_unavailable(store: Store) -> str | None:
    """Why the catalog on *store* cannot push its changes, or ``None`` if it can.

    The one place that decides whether a process listens: not on SQLite, and
    not through a transaction-mode pooler (``LISTEN`` belongs to a server
    session, which such a pooler hands to another client after each
    transaction: notifications would go to whoever has it, or nowhere).
    """
    if not store.is_postgres:
        return "SQLite has no NOTIFY"
    if store.config.transaction_pooled:
        return f"store {store.name!r} is reached through a transaction-mode pooler"
    return None


class CatalogListener:
    """One ``LISTEN`` connection to the catalog database, in a daemon thread.

    *on_message* gets each notification's payload. *on_connected* is called
    each time ``LISTEN`` has taken effect, before :attr:`connected` is set and
    before the first notification is read; *on_lost* when the connection is
    lost (notifications may have been missed). All run on the listening
    thread and must be quick and must not raise.
    """

    def __init__(
        self,
        conninfo: str,
        on_message: Callable[[str], None],
        on_lost: Callable[[], None],
        on_connected: Callable[[], None],
        *,
        name: str = "tenantry-catalog-listener",
        backoff: ExponentialBackoff | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._on_message = on_message
        self._on_lost = on_lost
        self._on_connected = on_connected
        self._name = name
        self._backoff = backoff or ExponentialBackoff(0.1, 10.0, jitter=0.2)
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # Written to by stop() to wake the thread out of its select().
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        #: The server process id of the listening connection (tests end it to see a reconnect).
        self.backend_pid: int | None = None
        #: How many times a LISTEN connection was established (the first one included).
        self.connections = 0

    @property
    def connected(self) -> bool:
        """Listening now: changes committed from here on reach this process."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        """Start the thread (once; later calls do nothing)."""
        with self._lock:
            if self._thread is not None or self._stopping.is_set():
                return
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and close the connection; waits up to *timeout* for the thread."""
        with self._lock:
            self._stopping.set()
            thread = self._thread
        with contextlib.suppress(OSError):  # closed by an earlier stop
            self._wake_w.send(b"x")
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if thread is None or not thread.is_alive():
            self._wake_r.close()
            self._wake_w.close()

    def _run(self) -> None:
        import psycopg  # the 'postgres' extra; only a PostgreSQL catalog listens

        while not self._stopping.is_set():
            try:
                self._listen()
            except (psycopg.Error, OSError) as exc:
                if self._stopping.is_set():
                    break
                was_connected = self._connected.is_set()
                self._connected.clear()
                self._on_lost()
                delay = self._backoff.failed()
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                log.warning(
                    "catalog LISTEN connection %s (%s); catalog entries expire by their TTL "
                    "until it is back (retrying in %.1f s)",
                    "lost" if was_connected else "failed",
                    reason,
                    delay,
                )
                self._stopping.wait(delay)
            except Exception:  # a bug here must not end push invalidation silently
                self._connected.clear()
                self._on_lost()
                log.exception("catalog listener failed; retrying")
                self._stopping.wait(self._backoff.failed())
        self._connected.clear()

    def _listen(self) -> None:
        """Connect, LISTEN, and hand on notifications until stopped or the connection fails."""
        import psycopg

        conn = psycopg.connect(
            self._conninfo,
            autocommit=True,
            application_name=self._name,
            connect_timeout=10,
            # A server that vanished without closing the socket is noticed.
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )
        with conn, selectors.DefaultSelector() as selector:
            conn.execute(f"LISTEN {CHANNEL}")
            self.backend_pid = conn.info.backend_pid
            self.connections += 1
            self._backoff.ok()
            self._on_connected()
            self._connected.set()
            selector.register(conn.fileno(), selectors.EVENT_READ, "db")
            selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            while not self._stopping.is_set():
                events = selector.select(_IDLE_WAKE)
                if any(key.data == "wake" for key, _ in events):
                    return
                if events:
                    # Reads what arrived; raises if the connection is gone.
                    for notify in conn.notifies(timeout=0.01):
                        self._on_message(notify.payload)


class PushInvalidation:
    """Keeps one process's catalog caches in step with the catalog's changes.

    Built by the facade for its catalog store; listens only once started
    (on first use of the catalog), and only where :func:`push_unavailable`
    allows. *invalidate_tenant* and *invalidate_key* take an id, or ``None``
    for every entry.
    """

    def __init__(
        self,
        store: Store,
        invalidate_tenant: Callable[[str | None], None],
        invalidate_key: Callable[[str | None], None],
        *,
        ttl: float,
    ) -> None:
        self._store = store
        self._invalidate_tenant = invalidate_tenant
        self._invalidate_key = invalidate_key
        self._ttl = ttl
        self._lock = threading.Lock()
        self._first_lock = threading.Lock()
        self._listener: CatalogListener | None = None
        self._stopped = False
        self.unavailable = push_unavailable(store)
        self._noted = False
        # True while start() waits for the first connection: no entry was read yet.
        self._first_wait = False

    @property
    def listener(self) -> CatalogListener | None:
        """The listener, once started (``None`` where nothing listens)."""
        return self._listener

    def start(self) -> None:
        """Start listening if this catalog can push and anything is cached (idempotent)."""
        if self._listener is not None or self._stopped or self._ttl <= 0:
            return
        if self.unavailable is not None:
            if not self._noted and self._store.is_postgres:
                self._noted = True
                log.info(
                    "catalog changes are not pushed (%s): other processes' changes are seen "
                    "within catalog_cache_ttl (%.1f s)",
                    self.unavailable,
                    self._ttl,
                )
            return
        with self._lock:  # other threads' first reads wait here too
            if self._listener is not None or self._stopped:
                return
            engine = self._store.admin_engine()
            conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            listener = CatalogListener(conninfo, self._received, self._everything, self._connected)
            self._first_wait = True
            listener.start()
            # Normally milliseconds; a slow server is not waited for long (the
            # entries read before it connects are dropped when it does).
            listener.wait_connected(_FIRST_CONNECT_WAIT)
            with self._first_lock:
                self._first_wait = False
            self._listener = listener

    def stop(self) -> None:
        """Stop listening for good (the facade is being closed)."""
        with self._lock:
            self._stopped = True
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()

    def active(self, wait: float = 0.0) -> bool:
        """Whether changes reach this process by push now (waiting up to *wait* to connect)."""
        if self._ttl > 0:
            self.start()
        listener = self._listener
        return listener is not None and listener.wait_connected(wait)

    def staleness(self, wait: float = 2.0) -> float:
        """How long another process may still act on a catalog entry changed now (seconds).

        ``catalog_cache_ttl`` without push; with it, the time a notification
        takes to arrive (:data:`PUSH_SETTLE_SECONDS`). This process listening
        is taken to mean the others do too: they run the same configuration
        against the same server. One whose listener is reconnecting at that
        moment serves from its cache until it is back (then it drops it all)
        or until the TTL, whichever comes first.
        """
        if self._ttl <= 0:
            return 0.0
        if self.active(wait):
            return min(self._ttl, PUSH_SETTLE_SECONDS)
        return self._ttl

    def _received(self, payload: str) -> None:
        if payload.startswith(TENANT_PREFIX):
            self._invalidate_tenant(payload[len(TENANT_PREFIX) :])
        elif payload.startswith(KEY_PREFIX):
            self._invalidate_key(payload[len(KEY_PREFIX) :])
        else:  # EVERYTHING, or a payload of a newer version: be safe
            self._everything()

    def _connected(self) -> None:
        """Changes committed before LISTEN took effect were not heard: drop what was read."""
        with self._first_lock:
            if self._first_wait:
                return  # the first connection, made before anything was read
        self._everything()

    def _everything(self) -> None:
        self._invalidate_tenant(None)
        self._invalidate_key(None)

"""Catalog changes pushed to other processes (LISTEN/NOTIFY), not waited out by TTL.

The other process is a real one: this module run as a program
(``python -m tests.integration.test_push_invalidation URL TTL``) is a peer
that keeps a Tenantry of its own and answers one JSON command per line. Every
test caches an entry in the peer with ``catalog_cache_ttl = 60`` and expects
the peer to see the change within a second: without push it would see it
after a minute.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text, update
from sqlalchemy.engine import make_url

from tenantry import StoreConfig, Tenantry, TenantryConfig, tenant_context
from tenantry.errors import TenantryError
from tenantry.lifecycle.move import move_tenant
from tenantry.tenancy.catalog import tenants_table
from tenantry.tenancy.invalidation import CHANNEL, PUSH_SETTLE_SECONDS

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[2]
TTL = 60.0
#: How soon the peer must see a change committed here.
WITHIN = 1.0


# -- the peer process -------------------------------------------------------------
def _peer_main(url: str, ttl: float) -> None:
    """Answer commands from stdin, one JSON object per line, until stdin closes."""
    import tests.models  # noqa: F401  - the same tenant tables as the test

    t = Tenantry(
        TenantryConfig(stores={"default": StoreConfig("default", url)}, catalog_cache_ttl=ttl)
    )

    def session(tenant: str) -> str:
        try:
            with tenant_context(tenant), t.session() as s:
                s.execute(text("SELECT 1"))
        except TenantryError as exc:
            return type(exc).__name__
        return "ok"

    def verify(key: str) -> str:
        try:
            t.api_keys.verify(key)
        except TenantryError as exc:
            return type(exc).__name__
        return "ok"

    def until(check: Callable[[], str], want: str, within: float) -> dict[str, Any]:
        """Repeat *check* until it answers *want* (or *within* seconds pass)."""
        began = time.monotonic()
        while True:
            got = check()
            if got == want or time.monotonic() - began > within:
                return {"got": got, "after": time.monotonic() - began}
            time.sleep(0.005)

    def listener(wait: float) -> dict[str, Any]:
        t.push.active(wait)
        found = t.push.listener
        if found is None:
            return {"pid": None, "connections": 0, "connected": False}
        return {
            "pid": found.backend_pid,
            "connections": found.connections,
            "connected": found.connected,
        }

    ops: dict[str, Callable[[dict[str, Any]], Any]] = {
        "session": lambda c: session(c["tenant"]),
        "verify": lambda c: verify(c["key"]),
        "session_until": lambda c: until(lambda: session(c["tenant"]), c["want"], c["within"]),
        "verify_until": lambda c: until(lambda: verify(c["key"]), c["want"], c["within"]),
        "listener": lambda c: listener(c.get("wait", 0.0)),
    }
    for line in sys.stdin:
        cmd = json.loads(line)
        print(json.dumps(ops[cmd["op"]](cmd)), flush=True)
    t.close()


class Peer:
    """The peer process, seen from the test."""

    def __init__(self, url: str, log: Path, ttl: float = TTL) -> None:
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.test_push_invalidation", url, str(ttl)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )

    def ask(self, op: str, **args: Any) -> Any:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the peer died; its log: {self._log.name}")
        return json.loads(line)

    def listening(self) -> dict[str, Any]:
        state = self.ask("listener", wait=10.0)
        assert state["connected"], state
        return dict(state)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


@pytest.fixture
def pg_url(pg_database: str) -> str:
    return pg_database


@pytest.fixture
def here(pg_url: str, tmp_path: Path) -> Iterator[Tenantry]:
    """This process's Tenantry (the one that makes the changes)."""
    t = Tenantry(
        TenantryConfig(
            stores={"default": StoreConfig("default", pg_url)},
            catalog_cache_ttl=TTL,
            data_dir=str(tmp_path),
        )
    )
    yield t
    t.close()


@pytest.fixture
def peer(pg_url: str, tmp_path: Path, here: Tenantry) -> Iterator[Peer]:
    here.setup()  # the catalog (and its triggers) exist before the peer starts
    p = Peer(pg_url, tmp_path / "peer.log")
    yield p
    p.close()


def _served(peer: Peer, tenant: str) -> None:
    """The peer listens, and serves *tenant* from a cached entry made since."""
    peer.listening()
    assert peer.ask("session", tenant=tenant) == "ok"


def _within(peer: Peer, began: float, reply: dict[str, Any], want: str) -> None:
    elapsed = time.monotonic() - began
    assert reply["got"] == want, reply
    assert elapsed < WITHIN, f"the peer took {elapsed:.2f} s"


# -- tests ------------------------------------------------------------------------
def test_a_suspend_refuses_new_sessions_in_another_process_within_a_second(
    here: Tenantry, peer: Peer
) -> None:
    here.create_tenant("acme")
    here.create_tenant("globex")
    _served(peer, "acme")
    _served(peer, "globex")

    began = time.monotonic()
    here.suspend_tenant("acme")
    reply = peer.ask("session_until", tenant="acme", want="TenantSuspendedError", within=5.0)

    _within(peer, began, reply, "TenantSuspendedError")
    assert peer.ask("session", tenant="globex") == "ok"  # only the named entry went


def test_a_delete_is_seen_by_another_process_within_a_second(here: Tenantry, peer: Peer) -> None:
    here.create_tenant("acme")
    _served(peer, "acme")

    began = time.monotonic()
    here.delete_tenant("acme")
    reply = peer.ask("session_until", tenant="acme", want="TenantNotFoundError", within=5.0)

    _within(peer, began, reply, "TenantNotFoundError")


def test_a_resume_is_seen_by_another_process_within_a_second(here: Tenantry, peer: Peer) -> None:
    here.create_tenant("acme")
    _served(peer, "acme")
    here.suspend_tenant("acme")
    reply = peer.ask("session_until", tenant="acme", want="TenantSuspendedError", within=5.0)
    assert reply["got"] == "TenantSuspendedError"  # now the peer caches the suspended entry

    began = time.monotonic()
    here.resume_tenant("acme")
    reply = peer.ask("session_until", tenant="acme", want="ok", within=5.0)

    _within(peer, began, reply, "ok")


def test_a_revoked_api_key_is_refused_by_another_process_within_a_second(
    here: Tenantry, peer: Peer
) -> None:
    here.create_tenant("acme")
    issued = here.api_keys.issue("acme")
    peer.listening()
    assert peer.ask("verify", key=issued.key) == "ok"  # cached in the peer

    began = time.monotonic()
    here.api_keys.revoke(issued.info.id)
    reply = peer.ask("verify_until", key=issued.key, want="AuthenticationError", within=5.0)

    _within(peer, began, reply, "AuthenticationError")


def test_the_listener_survives_losing_its_connection(here: Tenantry, peer: Peer) -> None:
    here.create_tenant("acme")
    _served(peer, "acme")
    first = peer.listening()
    with psycopg.connect(_libpq(here), autocommit=True) as conn:
        killed = conn.execute("SELECT pg_terminate_backend(%s)", (first["pid"],)).fetchone()
    assert killed == (True,)

    deadline = time.monotonic() + 10
    state = peer.ask("listener")
    while state["connections"] < 2 or not state["connected"]:
        assert time.monotonic() < deadline, f"the peer's listener did not reconnect: {state}"
        time.sleep(0.05)
        state = peer.ask("listener")
    assert state["pid"] != first["pid"]
    assert peer.ask("session", tenant="acme") == "ok"  # cached again after the reconnect

    began = time.monotonic()
    here.suspend_tenant("acme")
    reply = peer.ask("session_until", tenant="acme", want="TenantSuspendedError", within=5.0)

    _within(peer, began, reply, "TenantSuspendedError")


def test_a_change_is_notified_on_commit_only(here: Tenantry) -> None:
    here.create_tenant("acme")
    with psycopg.connect(_libpq(here), autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        with here.catalog.engine.connect() as conn:
            conn.execute(update(tenants_table).values(name="rolled back"))
            conn.rollback()
        assert [n.payload for n in listener.notifies(timeout=0.3)] == []
        with here.catalog.engine.begin() as conn:
            conn.execute(update(tenants_table).values(name="committed"))
            got = [n.payload for n in listener.notifies(timeout=0.3)]
            assert got == []  # not before the commit
        assert [n.payload for n in listener.notifies(timeout=2, stop_after=1)] == ["t:acme"]
        with here.catalog.engine.begin() as conn:
            conn.execute(text("TRUNCATE tenantry.tenantry_tenants CASCADE"))
        assert "*" in [n.payload for n in listener.notifies(timeout=2, stop_after=1)]


def test_a_move_pauses_without_waiting_for_the_cache_ttl(here: Tenantry, peer: Peer) -> None:
    here.create_tenant("acme", isolation="shared")
    _served(peer, "acme")
    assert here.catalog_staleness() == PUSH_SETTLE_SECONDS
    seen: dict[str, Any] = {}

    def after(step: str) -> None:
        if step == "paused":  # the other process refuses the paused tenant at once
            seen.update(
                peer.ask("session_until", tenant="acme", want="TenantMovingError", within=5)
            )

    result = move_tenant(here, "acme", isolation="schema", after_step=after)

    assert seen["got"] == "TenantMovingError"
    assert seen["after"] < WITHIN, seen
    # The pause includes the peer's check above, not the 60 s TTL.
    assert result.pause_seconds < 10, result.pause_seconds
    assert peer.ask("session_until", tenant="acme", want="ok", within=5.0)["got"] == "ok"


def test_without_push_a_move_still_waits_for_the_ttl(tmp_path: Path) -> None:
    t = Tenantry(
        TenantryConfig(
            stores={"default": StoreConfig("default", f"sqlite:///{tmp_path / 'main.db'}")},
            catalog_cache_ttl=0.5,
            data_dir=str(tmp_path),
        )
    )
    try:
        t.create_tenant("acme")
        assert t.push.listener is None  # SQLite: nothing listens
        assert t.catalog_staleness() == 0.5

        result = move_tenant(t, "acme", isolation="database")

        assert result.pause_seconds >= 0.5
    finally:
        t.close()


def test_nothing_listens_through_a_transaction_pooler(
    pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = StoreConfig("default", pg_url, pooler="transaction")
    t = Tenantry(TenantryConfig(stores={"default": store}, catalog_cache_ttl=TTL))
    try:
        with caplog.at_level(logging.INFO, logger="tenantry.tenancy.invalidation"):
            t.create_tenant("acme")
            assert t.catalog_staleness() == TTL  # a move waits for the TTL
        assert t.push.listener is None
        notices = [r.getMessage() for r in caplog.records if "not pushed" in r.getMessage()]
        assert len(notices) == 1, notices
        assert "transaction-mode pooler" in notices[0]
    finally:
        t.close()


def test_close_stops_the_listener(pg_url: str, tmp_path: Path) -> None:
    t = Tenantry(
        TenantryConfig(stores={"default": StoreConfig("default", pg_url)}, catalog_cache_ttl=TTL)
    )
    t.setup()
    listener = t.push.listener
    assert listener is not None
    assert listener.wait_connected(10)
    pid = listener.backend_pid

    t.close()

    assert not listener.connected
    with psycopg.connect(_libpq(t), autocommit=True) as conn:
        deadline = time.monotonic() + 5  # the server ends the backend soon after the close
        while conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            assert time.monotonic() < deadline, "the listening connection is still open"
            time.sleep(0.02)


def _libpq(t: Tenantry) -> str:
    url = make_url(t.catalog.engine.url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


if __name__ == "__main__":
    _peer_main(sys.argv[1], float(sys.argv[2]))

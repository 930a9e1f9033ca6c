"""A private PgBouncer in transaction mode, in front of the suite's PostgreSQL.

Transaction pooling hands a client's consecutive transactions to whichever
server connection is free, so any state a client leaves on a connection
outside a transaction (prepared statements, session settings, LISTEN) shows
up somewhere else. Tests that must hold up behind such a pooler run their
database URLs through :class:`PgBouncer`, started once per test process by the
``pgbouncer`` fixture:

    def test_it(pgbouncer: UrlViaPgBouncer, pg_database: str) -> None:
        url = pgbouncer(pg_database)   # same database, through the pooler

The pooler listens on a free port of 127.0.0.1 (never Debian's system service
on 6432), forwards every database name (``* = host=... port=...``) and every
login to the server unchanged: client logins are trusted (``auth_type = hba``
with a ``trust`` line), server logins go through because the suite's server
trusts local logins too, and users are looked up with ``auth_query`` so roles
created during a test need no registration. ``default_pool_size = 4`` keeps
the server connections few, so that many client transactions share each one.

PgBouncer refuses to run as root; as root (this sandbox, CI) it is started
with ``-u postgres`` and its directory is handed to that user. It runs in the
foreground as a child of the test process and is stopped (SIGTERM, then
SIGKILL) at the end of the session. When there is no pgbouncer binary, a run
with ``CI=true`` fails; locally the tests that need it are skipped.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.pgcluster import free_port

IN_CI = os.environ.get("CI", "").lower() == "true"
RUN_AS = "postgres"  # the OS user PgBouncer runs as when the tests run as root
ADMIN_USER = "postgres"  # may use the admin console (database "pgbouncer")
POOL_SIZE = 4

#: ``url_via_pgbouncer(direct_url) -> url``: the same database and login, through PgBouncer.
UrlViaPgBouncer = Callable[[str], str]


class PgBouncerUnavailable(RuntimeError):
    """No pgbouncer binary on this machine (or no way to run it)."""


def find_pgbouncer() -> str:
    """``$TENANTRY_PGBOUNCER``, ``pgbouncer`` on PATH or Debian's /usr/sbin/pgbouncer."""
    candidates = [
        os.environ.get("TENANTRY_PGBOUNCER"),
        shutil.which("pgbouncer"),
        "/usr/sbin/pgbouncer",
    ]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise PgBouncerUnavailable(
        "pgbouncer is not installed (apt-get install pgbouncer, or set TENANTRY_PGBOUNCER)"
    )


class PgBouncer:
    """One PgBouncer process forwarding to the PostgreSQL server at *server_url*.

    ``url(direct_url)`` rewrites a URL of that server to go through the pooler;
    ``admin(sql)`` runs a command on its admin console (``SHOW POOLS`` ...).
    """

    def __init__(self, server_url: str, *, pool_size: int = POOL_SIZE) -> None:
        server = make_url(server_url)
        self.server_host = server.host or "127.0.0.1"
        self.server_port = server.port or 5432
        self.pool_size = pool_size
        self.binary = find_pgbouncer()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                pwd.getpwnam(RUN_AS)
            except KeyError:
                raise PgBouncerUnavailable(
                    f"running as root, and there is no {RUN_AS!r} OS user to run pgbouncer as"
                ) from None
        self.port = 0
        self.dir = Path(tempfile.mkdtemp(prefix="tenantry-pgbouncer-"))
        self.ini = self.dir / "pgbouncer.ini"
        self.logfile = self.dir / "pgbouncer.log"
        self.pidfile = self.dir / "pgbouncer.pid"
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> None:
        hba = self.dir / "hba.conf"
        users = self.dir / "users.txt"
        hba.write_text("host all all 127.0.0.1/32 trust\n")
        # The auth_user must be known before auth_query can look up anyone else.
        users.write_text(f'"{ADMIN_USER}" ""\n')
        self.ini.write_text(
            "\n".join(
                [
                    "[databases]",
                    f"* = host={self.server_host} port={self.server_port}",
                    "",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    "auth_type = hba",
                    f"auth_hba_file = {hba}",
                    f"auth_file = {users}",
                    f"auth_user = {ADMIN_USER}",
                    "auth_query = SELECT usename, passwd FROM pg_catalog.pg_shadow"
                    " WHERE usename = $1",
                    f"admin_users = {ADMIN_USER}",
                    "pool_mode = transaction",
                    f"default_pool_size = {self.pool_size}",
                    "min_pool_size = 0",
                    "reserve_pool_size = 0",
                    "max_client_conn = 2000",
                    "max_db_connections = 0",
                    # Test databases come and go: do not keep idle server links for long.
                    "server_idle_timeout = 10",
                    "server_lifetime = 300",
                    "query_wait_timeout = 60",
                    f"logfile = {self.logfile}",
                    f"pidfile = {self.pidfile}",
                    "log_connections = 0",
                    "log_disconnections = 0",
                    "",
                ]
            )
        )
        if self.as_root:
            user = pwd.getpwnam(RUN_AS)
            os.chmod(self.dir, 0o755)
            for path in (self.dir, hba, users, self.ini):
                os.chown(path, user.pw_uid, user.pw_gid)

    def start(self, timeout: float = 20.0) -> None:
        """Start PgBouncer (foreground child) and wait until its admin console answers."""
        self.port = free_port()
        self._write_config()
        cmd = [self.binary]
        if self.as_root:
            cmd += ["-u", RUN_AS]
        cmd.append(str(self.ini))
        with (self.dir / "stderr.txt").open("wb") as stderr:
            self.proc = subprocess.Popen(  # a fixed binary with our own arguments
                cmd,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"pgbouncer exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                self.admin("SHOW VERSION")
                return
            except psycopg.OperationalError as exc:
                last = exc
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pgbouncer on port {self.port} not ready: {last}\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL) and delete its directory."""
        proc, self.proc = self.proc, None
        try:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, direct_url: str) -> str:
        """*direct_url* (a URL of the suite's server) rewritten to go through PgBouncer.

        Driver, login, password, database and query string are kept; only host
        and port change. A URL of another server is refused: the pooler only
        forwards to one.
        """
        u = make_url(direct_url)
        host, port = u.host or "127.0.0.1", u.port or 5432
        if (host, port) != (self.server_host, self.server_port) and port != self.port:
            raise ValueError(
                f"{u.render_as_string()} is not on the server PgBouncer forwards to "
                f"({self.server_host}:{self.server_port})"
            )
        return u.set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def admin(self, command: str) -> list[tuple[Any, ...]]:
        """Run *command* on the admin console (simple query protocol) and return its rows."""
        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=ADMIN_USER,
            dbname="pgbouncer",
            autocommit=True,
            connect_timeout=5,
        ) as conn:
            cur = conn.execute(command)
            return list(cur.fetchall()) if cur.description else []

    def log_tail(self, lines: int = 40) -> str:
        texts = []
        for path in (self.logfile, self.dir / "stderr.txt"):
            try:
                texts.append(path.read_text(errors="replace"))
            except OSError:
                continue
        text = "\n".join(texts) or "(no pgbouncer log)"
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        """The whole log so far (tests look for pooler errors in it)."""
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""


@pytest.fixture(scope="session")
def pgbouncer_server(pg_server: str) -> Iterator[PgBouncer]:
    """The running :class:`PgBouncer` (session-wide); fails in CI, skips locally, without it."""
    try:
        bouncer = PgBouncer(pg_server)
    except PgBouncerUnavailable as exc:
        if IN_CI:
            pytest.fail(f"CI=true and {exc}", pytrace=False)
        pytest.skip(str(exc))
    try:
        bouncer.start()
    except BaseException:
        bouncer.stop()
        raise
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture(scope="session")
def pgbouncer(pgbouncer_server: PgBouncer) -> UrlViaPgBouncer:
    """``url_via_pgbouncer(direct_url) -> str``: route a suite database URL through PgBouncer.

    Example: ``url = pgbouncer(pg_database)`` then build the store on *url*.
    """
    return pgbouncer_server.url

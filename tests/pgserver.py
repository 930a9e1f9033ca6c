"""The PostgreSQL server the suite runs against, chosen once per test process.

* ``TENANTRY_TEST_PG_URL`` set: that server, as it is.
* Otherwise a throwaway cluster tuned for tests, started by this process and
  stopped at the end of its session. Durability is switched off (``fsync``,
  ``synchronous_commit``, ``full_page_writes``) and the data lives on tmpfs
  where there is one: ``DROP DATABASE``, which every PostgreSQL test pays
  for, no longer waits on a checkpoint's disk writes. Each xdist worker
  starts its own: nothing to coordinate between processes, a crashed worker
  takes nobody else's server down, and cluster-wide objects (roles) are
  never shared by two tests at once.
* When no cluster can be started (no server binaries, no tmp space): the
  default server on 127.0.0.1:5432, if it answers.

Per-test databases are dropped by :class:`Dropper` on a background thread
after the test's own teardown, so that the next test need not wait for it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from tests.pgcluster import ClusterOptions, PgCluster, PgClusterUnavailable, reap_stale, tmpfs_dir

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SUITE_PREFIX = "tenantry-pgsuite-"

#: The suite's cluster: durability off (PgCluster always does that), otherwise
#: the settings of Debian's default cluster (locale, shared_buffers), and room
#: for the connections the queue tests open.
SUITE_OPTIONS = ClusterOptions(
    max_connections=300,
    prefix=SUITE_PREFIX,
    locale="C.UTF-8",
    settings={"shared_buffers": "128MB"},
)


def connect(url: str, dbname: str | None = None) -> psycopg.Connection[Any]:
    """An autocommit connection to *dbname* (default: the URL's database) on *url*'s server."""
    u = make_url(url)
    return psycopg.connect(
        host=u.host or "127.0.0.1",
        port=u.port or 5432,
        user=u.username or "postgres",
        password=u.password,
        dbname=dbname or u.database or "postgres",
        autocommit=True,
        connect_timeout=5,
    )


def _reachable(url: str) -> str | None:
    """None when *url* answers ``SELECT 1``, else why not."""
    try:
        with connect(url) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        return f"PostgreSQL at {make_url(url).render_as_string()} is unreachable: {exc}"
    return None


@dataclass
class SuiteServer:
    """The chosen server: ``url`` is None when there is none, and ``problems`` say why."""

    url: str | None = None
    cluster: PgCluster | None = None
    problems: list[str] = field(default_factory=list)

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.destroy()
            self.cluster = None


def _start_cluster() -> PgCluster:
    base = tmpfs_dir()
    with contextlib.suppress(OSError, RuntimeError, subprocess.SubprocessError):
        reap_stale(base or Path(tempfile.gettempdir()), SUITE_PREFIX)
    cluster = PgCluster(replace(SUITE_OPTIONS, base_dir=base))
    try:
        cluster.start()
    except BaseException:
        cluster.destroy()
        raise
    return cluster


def start_suite_server() -> SuiteServer:
    override = os.environ.get("TENANTRY_TEST_PG_URL")
    if override:
        problem = _reachable(override)
        return SuiteServer(None, None, [problem]) if problem else SuiteServer(override)
    server = SuiteServer()
    try:
        server.cluster = _start_cluster()
    except (PgClusterUnavailable, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        server.problems.append(f"no throwaway PostgreSQL cluster could be started: {first_line}")
    else:
        server.url = server.cluster.url("postgres", driver="postgresql")
        return server
    problem = _reachable(DEFAULT_URL)
    if problem:
        server.problems.append(problem)
    else:
        server.url = DEFAULT_URL
    return server


def _drop(conn: psycopg.Connection[Any], name: str) -> None:
    """Drop the database *name* and the tenant databases named after it."""
    rows = conn.execute(
        "SELECT datname FROM pg_database WHERE datname = %s OR datname LIKE %s",
        (name, name + "\\_%"),
    ).fetchall()
    for (db,) in rows:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))


class Dropper:
    """Drops per-test databases on one background thread, in the order given.

    A failed drop is raised by the next :meth:`submit` or by :meth:`close`, so it
    is never lost (it fails a later teardown rather than none).
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._todo: queue.Queue[str | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pg-dropper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        try:
            while (name := self._todo.get()) is not None:
                try:
                    if conn is None or conn.closed:
                        conn = connect(self._url, "postgres")
                    _drop(conn, name)
                except Exception as exc:  # reported by submit() / close()
                    self._error = self._error or exc
                    if conn is not None:
                        conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()

    def _raise(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise RuntimeError(f"dropping a test database failed: {error}") from error

    def submit(self, names: Iterable[str]) -> None:
        self._raise()
        for name in names:
            self._todo.put(name)

    def close(self) -> None:
        """Wait until every submitted database is gone."""
        self._todo.put(None)
        self._thread.join()
        self._raise()

"""Throwaway PostgreSQL databases for the benchmark suite, and small queries on them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
from sqlalchemy.engine import make_url


class Server:
    """The PostgreSQL server every system is measured on (one URL, any driver name)."""

    def __init__(self, url: str) -> None:
        u = make_url(url)
        self.host = u.host or "127.0.0.1"
        self.port = u.port or 5432
        self.user = u.username or "postgres"
        self.password = u.password

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=dbname,
            autocommit=True,
        )

    def dsn(self, dbname: str, driver: str = "postgresql") -> str:
        auth = self.user if self.password is None else f"{self.user}:{self.password}"
        return f"{driver}://{auth}@{self.host}:{self.port}/{dbname}"

    def version(self) -> str:
        with self.connect() as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def settings(self, *names: str) -> dict[str, str]:
        with self.connect() as conn:
            return {
                n: str(row[0]) if (row := conn.execute(f"SHOW {n}").fetchone()) else "?"
                for n in names
            }

    def create(self, prefix: str = "tbench", template: str | None = None) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with self.connect() as conn:
            if template is None:
                conn.execute(f'CREATE DATABASE "{name}"')
            else:
                # FILE_COPY: a checkpoint and a file copy, much faster than WAL-logging
                # every page of a template that holds millions of rows.
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
        return name

    def drop(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @contextmanager
    def database(self, prefix: str = "tbench", template: str | None = None) -> Iterator[str]:
        """A fresh database, dropped afterwards whatever happens."""
        name = self.create(prefix, template)
        try:
            yield name
        finally:
            self.drop(name)

    def settle(self) -> None:
        """Write out every dirty page now (``CHECKPOINT``), before a timed step.

        Otherwise the previous step's writes (a 20,000-job drain, a database
        cloned from a template) are flushed during the next one, and whichever
        system runs next pays for them.
        """
        # Not a superuser (nor pg_checkpoint): the steps run unsettled.
        with self.connect() as conn, suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute("CHECKPOINT")

    def commit_rates(self, seconds: int) -> list[int]:
        """Commits per second, second by second: one-row INSERTs, each its own transaction.

        Every single-enqueue figure is mostly this: with ``fsync`` on, each
        commit waits for its WAL flush, and how long that takes here moves
        from second to second with the disk under the virtual machine. The
        spread shows how far apart two runs of the same system can land.
        """
        with self.database("tbench_fsync") as db, self.connect(db) as conn:
            conn.execute("CREATE TABLE t (n int)")
            rates = []
            for _ in range(seconds):
                n, end = 0, time.perf_counter() + 1.0
                while time.perf_counter() < end:
                    conn.execute("INSERT INTO t VALUES (1)")
                    n += 1
                rates.append(n)
        return rates

    def scalar(self, dbname: str, sql: str) -> Any:
        with self.connect(dbname) as conn:
            row = conn.execute(sql).fetchone()
        return row[0] if row else None

    def execute(self, dbname: str, sql: str) -> None:
        with self.connect(dbname) as conn:
            conn.execute(sql)

    def wait_until_false(
        self, dbname: str, sql: str, timeout: float, interval: float = 0.02, alive: Any = None
    ) -> float | None:
        """Poll *sql* (a boolean) until it is false; the time.time() it was seen false.

        ``alive()`` is checked on every round: when it returns False (a worker
        died) the wait ends early with None, as it does on timeout.
        """
        deadline = time.monotonic() + timeout
        with self.connect(dbname) as conn:
            while time.monotonic() < deadline:
                row = conn.execute(sql).fetchone()
                if row is not None and not row[0]:
                    return time.time()
                if alive is not None and not alive():
                    return None
                time.sleep(interval)
        return None

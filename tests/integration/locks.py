"""A lock held on a table from a connection of its own: a stand-in for a slow database.

A query of the code under test that reaches the table waits there, holding its
pooled connection, until the lock is released: what a slow statement does,
without patching the code.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url


class TableLock:
    """``with TableLock(url, "tenantry", "tenantry_jobs") as lock``: ACCESS EXCLUSIVE until exit."""

    def __init__(self, url: str, schema: str, table: str) -> None:
        self._url = make_url(url)
        self._schema, self._table = schema, table
        self._conn: psycopg.Connection[Any] | None = None

    def __enter__(self) -> TableLock:
        u = self._url
        self._conn = psycopg.connect(
            host=u.host, port=u.port or 5432, user=u.username, dbname=u.database
        )
        self._conn.execute(
            sql.SQL("LOCK TABLE {}.{} IN ACCESS EXCLUSIVE MODE").format(
                sql.Identifier(self._schema), sql.Identifier(self._table)
            )
        )
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._conn is not None:
            self._conn.close()

    async def wait_for_waiter(self, timeout: float = 10.0) -> None:
        """Until another connection waits for this lock (the code under test is held)."""
        assert self._conn is not None
        deadline = time.monotonic() + timeout
        name = f"{self._schema}.{self._table}"
        while True:
            found = self._conn.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass",
                (name,),
            ).fetchone()
            if found and found[0]:
                return
            assert time.monotonic() < deadline, f"nothing came to wait on {name}"
            await asyncio.sleep(0.02)

    def release_after(self, seconds: float) -> None:
        """Release the lock from this event loop *seconds* from now."""
        assert self._conn is not None
        asyncio.get_running_loop().call_later(seconds, self._conn.rollback)

    async def cancel_while_held(self, task: asyncio.Task[Any], hold: float = 0.3) -> float:
        """Cancel *task* once its query waits here; the lock goes *hold* seconds later.

        Returns how long the cancelled task took to finish: about *hold* if it
        waited for its query, about nothing if it left the query behind.
        """
        await self.wait_for_waiter()
        self.release_after(hold)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - started

"""The tenant binding on PostgreSQL: a tenant context that injected SQL cannot forge.

Row-level security needs to know the tenant of the current transaction. A
plain setting (``set_config('tenantry.tenant_id', ...)``) can be rewritten by
any SQL that runs in that transaction, so one injected statement would switch
tenants. Instead, each database holding tenant data has:

* ``tenantry.binding_key``: a random HMAC key, readable only by its owner
  (the admin login);
* ``tenantry.enter(tenant, token)``: a ``SECURITY DEFINER`` function that
  checks ``token = HMAC(key, 'enter:' || tenant)``, clears what earlier users
  of the connection left behind (``RESET ALL``, ``DISCARD TEMP``) and records
  the tenant together with a proof, an HMAC of (backend, transaction start,
  tenant);
* ``tenantry.current_tenant()``: the tenant if the proof belongs to this
  backend and this transaction, else NULL. Every tenant policy compares
  ``tenant_id`` with it, once per statement.

Tokens are computed here, in the application, which reads the key through the
admin engine. SQL running as the session login can neither read the key nor
compute a token, so it can only ever make the context *empty* (no rows), never
another tenant's.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, TextClause, event, text
from sqlalchemy.exc import DBAPIError

from tenantry.errors import IsolationError
from tenantry.tenancy.models import TENANTRY_SCHEMA
from tenantry.tenancy.pgsql import ddl_lock, quote

#: Engine execution option holding a :class:`Binding`: every transaction on a
#: connection of that engine starts bound to the tenant.
BIND_OPTION = "tenantry_bind"
#: Bumped when the functions below change, so existing databases get the new ones.
WALL_VERSION = "2"

_KEY_TABLE = f"{TENANTRY_SCHEMA}.binding_key"

# plpgsql, with the key read and the hashes computed inline: plpgsql keeps its
# statements' plans for the session, where a SQL helper function would be
# planned again at every call (measured: 5x the cost of current_tenant()).
_PROOF = (
    "encode(sha256(ok || sha256(ik || convert_to('proof:' || pg_backend_pid() || ':'"
    " || (extract(epoch FROM transaction_timestamp()) * 1000000)::bigint || ':' || tenant,"
    " 'UTF8'))), 'hex')"
)
_FUNCTIONS = f"""
DROP FUNCTION IF EXISTS {TENANTRY_SCHEMA}.binding_mac(text);
DROP FUNCTION IF EXISTS {TENANTRY_SCHEMA}.binding_nonce(text);
CREATE OR REPLACE FUNCTION {TENANTRY_SCHEMA}.enter(tenant text, token bytea) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
  ik bytea;
  ok bytea;
BEGIN
  RESET ALL;
  DISCARD TEMP;
  SELECT k.ik, k.ok INTO ik, ok FROM {_KEY_TABLE} k WHERE k.id = 1;
  IF tenant IS NULL OR token IS NULL OR ik IS NULL
     OR sha256(ok || sha256(ik || convert_to('enter:' || tenant, 'UTF8'))) IS DISTINCT FROM token
  THEN
    RAISE EXCEPTION 'tenantry: invalid tenant binding' USING ERRCODE = '42501';
  END IF;
  PERFORM set_config('tenantry.tenant_id', tenant, true);
  PERFORM set_config('tenantry.proof', {_PROOF}, true);
END
$$;
CREATE OR REPLACE FUNCTION {TENANTRY_SCHEMA}.current_tenant() RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
  tenant text := current_setting('tenantry.tenant_id', true);
  ik bytea;
  ok bytea;
BEGIN
  IF tenant IS NULL OR tenant = '' THEN
    RETURN NULL;
  END IF;
  SELECT k.ik, k.ok INTO ik, ok FROM {_KEY_TABLE} k WHERE k.id = 1;
  IF current_setting('tenantry.proof', true) = {_PROOF} THEN
    RETURN tenant;
  END IF;
  RETURN NULL;
END
$$;
COMMENT ON FUNCTION {TENANTRY_SCHEMA}.enter(text, bytea) IS 'tenantry wall {WALL_VERSION}'
"""

ENTER_SQL = f"SELECT {TENANTRY_SCHEMA}.enter(:tid, :token), set_config('search_path', :path, true)"
_ENTER = text(ENTER_SQL)


@dataclass(frozen=True)
class Binding:
    """What a tenant transaction starts with: the tenant, its token and its search_path."""

    tenant_id: str
    token: bytes
    search_path: str

    @property
    def params(self) -> dict[str, Any]:
        return {"tid": self.tenant_id, "token": self.token, "path": self.search_path}


class Binder:
    """One store's key, and the tokens made from it.

    The key is read (or, the first time, created) through the admin engine
    and kept for the life of the process; tokens are cached per tenant.
    """

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._tokens: dict[str, bytes] = {}

    def token(self, tenant_id: str) -> bytes:
        found = self._tokens.get(tenant_id)
        if found is None:
            found = self.mac(f"enter:{tenant_id}")
            self._tokens[tenant_id] = found
        return found

    def mac(self, message: str) -> bytes:
        return hmac.new(self._key, message.encode(), hashlib.sha256).digest()

    def login_password(self, role: str) -> str:
        """The password of the session login tenantry creates (derived: nothing to store)."""
        return self.mac(f"login:{role}").hex()

    def binding(self, tenant_id: str, search_path: str) -> Binding:
        return Binding(tenant_id, self.token(tenant_id), search_path)

    @property
    def key(self) -> bytes:
        return self._key


def _padded(key: bytes, pad: int) -> bytes:
    return bytes(b ^ pad for b in key.ljust(64, b"\0"))


def wall_installed(conn: Connection) -> bool:
    """Whether this database has the current version of the binding functions."""
    row = conn.execute(
        text(
            "SELECT obj_description(to_regprocedure(:fn), 'pg_proc') = :comment"
            " AND to_regclass(:table) IS NOT NULL"
        ),
        {
            "fn": f"{TENANTRY_SCHEMA}.enter(text,bytea)",
            "comment": f"tenantry wall {WALL_VERSION}",
            "table": _KEY_TABLE,
        },
    ).scalar()
    return bool(row)


def install_wall(conn: Connection, key: bytes | None = None) -> bytes:
    """The key table and functions in this database; returns the database's key.

    With *key* (a tenant database getting its store's key) that key is
    stored; otherwise an existing key is kept, or a new one made. Idempotent,
    serialised with tenantry's other DDL.
    """
    ddl_lock(conn)
    conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {TENANTRY_SCHEMA}")
    conn.exec_driver_sql(
        f"CREATE TABLE IF NOT EXISTS {_KEY_TABLE} (id int PRIMARY KEY CHECK (id = 1),"
        " k bytea NOT NULL, ik bytea NOT NULL, ok bytea NOT NULL)"
    )
    conn.exec_driver_sql(f"REVOKE ALL ON {_KEY_TABLE} FROM PUBLIC")
    stored = conn.execute(text(f"SELECT k FROM {_KEY_TABLE} WHERE id = 1")).scalar()
    if key is None:
        key = bytes(stored) if stored is not None else secrets.token_bytes(32)
    if stored is None or bytes(stored) != key:
        conn.execute(
            text(
                f"INSERT INTO {_KEY_TABLE} (id, k, ik, ok) VALUES (1, :k, :ik, :ok)"
                " ON CONFLICT (id) DO UPDATE SET k = excluded.k, ik = excluded.ik, ok = excluded.ok"
            ),
            {"k": key, "ik": _padded(key, 0x36), "ok": _padded(key, 0x5C)},
        )
    if not wall_installed(conn):
        conn.exec_driver_sql(_FUNCTIONS)
    return key


def read_key(conn: Connection) -> bytes | None:
    """This database's key, or None when the wall is not installed (or is outdated)."""
    if not wall_installed(conn):
        return None
    value = conn.execute(text(f"SELECT k FROM {_KEY_TABLE} WHERE id = 1")).scalar()
    return None if value is None else bytes(value)


def grant_wall(conn: Connection, grantee: str) -> None:
    """What the session login needs of the wall: the schema and the two entry points."""
    q = quote(conn, grantee)
    conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA {TENANTRY_SCHEMA} TO {q}")
    for fn in ("enter(text, bytea)", "current_tenant()"):
        conn.exec_driver_sql(f"GRANT EXECUTE ON FUNCTION {TENANTRY_SCHEMA}.{fn} TO {q}")


# -- binding every transaction ---------------------------------------------------------


def bind_transactions(engine: Engine) -> None:
    """Run the tenant binding at the start of every transaction of *engine*'s connections.

    Engine-level, not session-level: a transaction begun again on the same
    connection (``session.connection().commit()`` and more statements) is
    bound again. Connections whose options carry no :data:`BIND_OPTION`
    (global sessions, the admin's own work) are left alone.
    """
    event.listen(engine, "begin", _bind_transaction)
    event.listen(engine, "set_connection_execution_options", _refuse_autocommit)
    event.listen(engine, "set_engine_execution_options", _refuse_autocommit_engine)


def clean_between_users(engine: Engine) -> None:
    """What one user of a pooled session connection leaves must not reach the next.

    For the engines of tenant and global sessions only (the admin's and the
    queue's connections run tenantry's own SQL, and keep their prepared
    statements and settings on purpose).
    """
    event.listen(engine, "connect", _session_connection)
    event.listen(engine, "before_cursor_execute", _note_raw_sql)
    event.listen(engine, "checkin", _discard_after_raw_sql)


def _session_connection(dbapi_connection: Any, _record: Any) -> None:
    """``BEGIN READ WRITE``, and no prepared statements, on session connections.

    A ``SET default_transaction_read_only = on`` left on the connection by
    raw SQL would otherwise make the next user's transaction read-only before
    ``tenantry.enter`` could reset it (psycopg adds ``READ WRITE`` to its
    BEGIN when told; ``postgresql_readonly=True`` still asks for read-only).

    Prepared statements: psycopg names the statements it prepares
    (``_pg3_0``, ...) and runs them by name. SQL in one tenant's request could
    ``DEALLOCATE`` such a name and ``PREPARE`` it again as its own statement,
    which the next tenant's innocent query on the connection would then run,
    bound to that tenant. Session connections therefore prepare nothing, and
    the ``DISCARD ALL`` at check-in leaves psycopg nothing to lose track of.
    """
    driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    if hasattr(driver, "prepare_threshold"):
        driver.prepare_threshold = None
    set_read_only = getattr(dbapi_connection, "set_read_only", None)
    if set_read_only is not None:  # SQLAlchemy's adapter of an async psycopg connection
        set_read_only(False)
    elif hasattr(dbapi_connection, "read_only"):
        dbapi_connection.read_only = False


#: Connection-record flag: SQL that tenantry did not compile ran on this connection.
_RAW = "tenantry_raw_sql"
#: Execution option of tenantry's own text SQL on a session's connection (the
#: queue's enqueue): it changes no session state, so it does not count as raw.
OWN_SQL_OPTION = "tenantry_own_sql"


def _note_raw_sql(
    conn: Connection, _cursor: Any, _statement: str, _params: Any, context: Any, _many: bool
) -> None:
    """Remember a connection on which text SQL ran: it may have changed session state."""
    if context.execution_options.get(OWN_SQL_OPTION):
        return
    compiled = getattr(context, "compiled", None)
    statement = None if compiled is None else compiled.statement
    if statement is None or (isinstance(statement, TextClause) and statement is not _ENTER):
        conn.info[_RAW] = True


def _discard_after_raw_sql(dbapi_connection: Any, record: Any) -> None:
    """``DISCARD ALL`` when a connection that ran text SQL goes back to the pool.

    ``tenantry.enter`` resets settings at the start of the next tenant
    transaction, but a ``statement_timeout`` is armed before ``enter`` runs,
    and a global session does not run ``enter`` at all. Connections that
    only ran tenantry's compiled statements skip the round trip. Session
    connections prepare no statements (see :func:`_session_connection`), so
    nothing psycopg knows of is lost.
    """
    if not record.info.pop(_RAW, False) or dbapi_connection is None:
        return
    try:
        dbapi_connection.autocommit = True
        try:
            dbapi_connection.execute("DISCARD ALL", prepare=False)
        finally:
            dbapi_connection.autocommit = False
    except Exception:  # a broken connection: the pool must not hand it out again
        record.invalidate()


def _bind_transaction(conn: Connection) -> None:
    binding = conn.get_execution_options().get(BIND_OPTION)
    if not isinstance(binding, Binding):
        return
    if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        raise IsolationError(_AUTOCOMMIT)
    try:
        conn.execute(_ENTER, binding.params)
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == "42883":  # undefined_function
            raise IsolationError(
                f"the database of tenant {binding.tenant_id!r} lacks tenantry's isolation "
                "functions (tenantry.enter); run `tenantry migrate` to install them"
            ) from exc
        raise


_AUTOCOMMIT = (
    "AUTOCOMMIT is refused on tenant connections: each transaction must start with "
    "tenantry's tenant binding, and autocommitted statements would run without it"
)


def _refuse_autocommit(conn: Connection, opts: dict[str, Any]) -> None:
    merged = {**conn.get_execution_options(), **opts}
    if merged.get("isolation_level") == "AUTOCOMMIT" and BIND_OPTION in merged:
        raise IsolationError(_AUTOCOMMIT)


def _refuse_autocommit_engine(engine: Engine, opts: dict[str, Any]) -> None:
    merged = {**engine.get_execution_options(), **opts}
    if merged.get("isolation_level") == "AUTOCOMMIT" and BIND_OPTION in merged:
        raise IsolationError(_AUTOCOMMIT)

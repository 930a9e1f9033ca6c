"""Setting up a PostgreSQL store for the tenant binding, once per process and store.

Three things must hold before any session connects:

* the store database has the binding key and functions
  (:mod:`tenantry.tenancy.binding`);
* tenant and global sessions connect as a *session login* that can bypass
  nothing: not a superuser, not BYPASSRLS, not an owner of tenant tables,
  and not a member of a role that is. With ``admin_url`` set that is ``url``'s
  login, checked here; with one URL only (the quickstart's superuser URL)
  tenantry creates a login of its own for the store database and sessions use
  it;
* the session login cannot create temporary tables (``TEMPORARY`` is revoked
  from ``PUBLIC`` on the store database when the admin may do so).
"""

from __future__ import annotations

import hashlib
import threading
from typing import TYPE_CHECKING

from sqlalchemy import Connection, text

from tenantry.errors import IsolationError
from tenantry.tenancy.binding import Binder, grant_wall, install_wall, read_key
from tenantry.tenancy.logs import get_logger
from tenantry.tenancy.pgsql import ddl_lock, quote

if TYPE_CHECKING:
    from tenantry.tenancy.store import Store

log = get_logger(__name__)
_lock = threading.Lock()


def session_login_name(rls_role: str, database: str) -> str:
    """The login tenantry creates for one store database's sessions (one URL set-up).

    One per database, because a role is shared by the whole server while each
    store database has a key (and so a password) of its own.
    """
    name = f"{rls_role}_{database}"
    if len(name) > 63:
        digest = hashlib.sha256(database.encode()).hexdigest()[:8]
        name = f"{rls_role[:40]}_{digest}"
    return name


def prepare(store: Store) -> Binder:
    """The store's binder, after making sure the wall stands (idempotent, cached)."""
    binder = store.binder
    if binder is not None:
        return binder
    with _lock:
        if store.binder is not None:
            return store.binder
        with store.admin_engine().begin() as conn:
            key = read_key(conn)
            if key is None:
                key = install_wall(conn)
            binder = Binder(key)
            _session_login(conn, store, binder)
        store.binder = binder
        return binder


def _session_login(conn: Connection, store: Store, binder: Binder) -> None:
    grantee = store.session_grantee
    login = store.session_login
    if store.owns_session_login:
        _ensure_login(conn, login, binder.login_password(login))
    elif store.config.rls_role and store.has_admin_url:
        _ensure_group(conn, store.config.rls_role, login)
    check_login(conn, login, store.name)
    ddl_lock(conn)
    grant_wall(conn, grantee)
    revoke_temporary(conn)


def _ensure_login(conn: Connection, login: str, password: str) -> None:
    """Create (or re-enable) the session login, with the password derived from the key."""
    ddl_lock(conn)
    q = quote(conn, login)
    row = conn.execute(
        text("SELECT rolcanlogin FROM pg_roles WHERE rolname = :r"), {"r": login}
    ).first()
    options = "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION INHERIT"
    # A password cannot be a bound parameter in DDL; it is hex, so it needs no escaping.
    if row is None:
        conn.exec_driver_sql(f"CREATE ROLE {q} {options} PASSWORD '{password}'")
        log.info("created the session login %s", login)
    else:
        # Attributes stay as they are (only a superuser may name some of them);
        # check_login refuses the login if they let it bypass anything.
        conn.exec_driver_sql(f"ALTER ROLE {q} LOGIN PASSWORD '{password}'")


def _ensure_group(conn: Connection, role: str, login: str) -> None:
    """The NOLOGIN role that holds the grants, and the session login in it."""
    ddl_lock(conn)
    q = quote(conn, role)
    exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
    if exists is None:
        conn.exec_driver_sql(
            "DO $$ BEGIN "
            f"CREATE ROLE {q} NOLOGIN NOSUPERUSER NOBYPASSRLS; "
            "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        )
    granted = conn.execute(
        text("SELECT pg_has_role(:m, :r, 'MEMBER')"), {"m": login, "r": role}
    ).scalar()
    if not granted:
        conn.exec_driver_sql(f"GRANT {q} TO {quote(conn, login)}")


def check_login(conn: Connection, login: str, store_name: str) -> None:
    """Refuse a session login that could step around row-level security."""
    row = conn.execute(
        text(
            "SELECT"
            " EXISTS (SELECT 1 FROM pg_roles r WHERE (r.rolsuper OR r.rolbypassrls)"
            "   AND pg_has_role(:u, r.oid, 'MEMBER')),"
            " EXISTS (SELECT 1 FROM pg_class c WHERE c.relrowsecurity"
            "   AND pg_has_role(:u, c.relowner, 'MEMBER'))"
            " FROM pg_roles WHERE rolname = :u"
        ),
        {"u": login},
    ).first()
    if row is None:
        raise IsolationError(f"store {store_name!r}: the session login {login!r} does not exist")
    bypasses, owns = row
    fix = (
        "give `url` a login that owns nothing and bypasses nothing "
        "(CREATE ROLE app LOGIN NOSUPERUSER NOBYPASSRLS) and keep the owner in `admin_url`"
    )
    if bypasses:
        raise IsolationError(
            f"store {store_name!r}: tenant sessions would run as {login!r}, a superuser or "
            f"BYPASSRLS role (or a member of one), which row-level security does not "
            f"restrict; {fix}"
        )
    if owns:
        raise IsolationError(
            f"store {store_name!r}: tenant sessions would run as {login!r}, which owns (or "
            f"can become the owner of) tables under row-level security and could switch it "
            f"off; {fix}"
        )


def revoke_temporary(conn: Connection) -> None:
    """No temporary tables for PUBLIC on this database (when the admin may say so).

    A temporary table lives as long as the connection, which a pool hands to
    the next tenant; the owner and superusers keep the privilege.
    """
    may = conn.execute(
        text(
            "SELECT d.datname, (d.datdba = r.oid OR r.rolsuper)"
            " FROM pg_database d, pg_roles r"
            " WHERE d.datname = current_database() AND r.rolname = current_user"
        )
    ).one()
    name, allowed = may
    if not allowed:
        return
    public_temp = conn.execute(
        text(
            "SELECT EXISTS (SELECT 1 FROM pg_database d, aclexplode(COALESCE(d.datacl,"
            " acldefault('d', d.datdba))) a WHERE d.datname = current_database()"
            " AND a.grantee = 0 AND a.privilege_type = 'TEMPORARY')"
        )
    ).scalar()
    if public_temp:
        conn.exec_driver_sql(f"REVOKE TEMPORARY ON DATABASE {quote(conn, name)} FROM PUBLIC")


def ensure_database_wall(conn: Connection, store: Store) -> None:
    """The store's key and functions in *conn*'s database, the grants, no TEMPORARY.

    For a tenant's own database (and, harmlessly, the store database). Call
    :func:`prepare` (``store.prepare_wall()``) before opening *conn* on the
    store database: preparing takes the DDL lock on a connection of its own.
    """
    binder = prepare(store)  # first: it may take the store database's DDL lock itself
    # Concurrent GRANTs on one object fail ("tuple concurrently updated"): two
    # workers starting at once both run this for every tenant database.
    ddl_lock(conn)
    if read_key(conn) != binder.key:
        install_wall(conn, binder.key)
    grant_wall(conn, store.session_grantee)
    revoke_temporary(conn)

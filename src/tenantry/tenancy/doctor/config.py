"""Checks of a store's settings: literal passwords in ``tenantry.toml``, and the pooler.

Neither needs a tenant: a password written in the file is a secret in version
control and backups; a transaction pooler in front of ``url`` without
``pooler = "transaction"`` breaks sessions' prepared statements.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from tenantry.tenancy.config import TenantryConfig
from tenantry.tenancy.doctor.findings import Finding, unreachable
from tenantry.tenancy.store import Store
from tenantry.tenancy.urls import mask_url

#: Port a PgBouncer listens on unless told otherwise.
PGBOUNCER_PORT = 6432

_ENV_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
#: ``scheme://user:PASSWORD@host...``: the password runs to the last "@" (a host has none).
_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@]*:(?P<password>.*)@[^@]*", re.S)


def config_findings(config: TenantryConfig) -> list[Finding]:
    """Literal passwords in ``tenantry.toml`` (a warning: ``${VAR}`` keeps them out of it).

    The file is read again as it is on disk, because the configuration object
    cannot tell a URL that came from ``TENANTRY_DATABASE_URL`` from one written
    in the file. (The catalog records stores by name only, never their URLs,
    so it holds no secret to check.)
    """
    path = Path(config.source)
    if not config.source.endswith(".toml") or not path.is_file():
        return []
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return []  # the configuration loaded, so this is a race with an edit
    stores = data.get("stores")
    if not isinstance(stores, dict):
        return []
    findings = []
    for name, options in stores.items():
        if not isinstance(options, dict):
            continue
        for key in ("url", "admin_url"):
            value = options.get(key)
            if isinstance(value, str) and _literal_password(value):
                findings.append(
                    Finding(
                        str(name),
                        f"{path.name} stores.{name}.{key}",
                        "the URL holds a literal password",
                        f"write the password as ${{VAR}} in {mask_url(value)} and set VAR "
                        "in the environment",
                        severity="warn",
                        check="secrets",
                    )
                )
    return findings


def _literal_password(url: str) -> bool:
    """Whether *url* has a password that is not made only of ``${NAME}`` references."""
    match = _PASSWORD.match(url)
    return match is not None and bool(_ENV_REF.sub("", match.group("password")))


def pooler_suspected(port: int | None, reported_pid: int | None, server_pid: int | None) -> bool:
    """Whether a connection goes through a pooler such as PgBouncer.

    PgBouncer hands clients a cancel key of its own making, so the backend
    pid the client was told at connect differs from ``pg_backend_pid()``; a
    direct connection's are equal. Port 6432 (PgBouncer's default) also counts.
    """
    if port == PGBOUNCER_PORT:
        return True
    return reported_pid is not None and server_pid is not None and reported_pid != server_pid


def pooler(store: Store) -> list[Finding]:
    """A transaction pooler in front of ``url`` needs ``pooler = "transaction"``.

    Asked through ``url``, the way sessions connect (the admin login often
    bypasses the pooler); with ``url`` alone through the admin engine, which
    connects there too: the session engine would first prepare the wall
    (DDL), and checking changes nothing.
    """
    if getattr(store.config, "pooler", "none") == "transaction":
        return []
    url = store.config.parsed_url(expand=False)
    engine = store.engine() if store.has_admin_url else store.admin_engine()
    try:
        with engine.connect() as conn:
            suspected = _through_pooler(url.port, conn)
            conn.rollback()
    except SQLAlchemyError as exc:
        return [unreachable(store.name, f"store {store.name} url {store.config.masked_url}", exc)]
    if not suspected:
        return []
    return [
        Finding(
            store.name,
            f"store {store.name} url {store.config.masked_url}",
            "sessions connect through a connection pooler (PgBouncer) but pooler is not "
            '"transaction" (prepared statements collide across server connections)',
            f'set pooler = "transaction" in [stores.{store.name}]',
            check="pooler",
        )
    ]


def _through_pooler(port: int | None, conn: Connection) -> bool:
    server_pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    dbapi = conn.connection.dbapi_connection
    info = getattr(dbapi, "info", None)
    reported = getattr(info, "backend_pid", None)
    return pooler_suspected(port, reported, None if server_pid is None else int(server_pid))

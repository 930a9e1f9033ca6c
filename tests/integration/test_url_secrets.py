"""A password full of URL-special characters, given as ``${VAR}``, really logs in to PostgreSQL.

The suite's shared server trusts every login, so this test runs a private
server that checks passwords (scram-sha-256) for everyone but the superuser.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from tenantry import StoreConfig, Tenantry, TenantryConfig
from tenantry.tenancy.urls import mask_url
from tests.pgcluster import PgCluster, PgClusterUnavailable

pytestmark = pytest.mark.postgres

#: Every character with a meaning in a URL, a space, and an escape that must not be decoded.
SECRET = "Hunter2@Prod#Secret:/?%41[ ]x"
ROLE = "nasty_login"


@pytest.fixture(scope="module")
def password_server() -> Iterator[PgCluster]:
    try:
        cluster = PgCluster()
    except PgClusterUnavailable as exc:
        pytest.skip(f"a private PostgreSQL cannot be run here: {exc}")
    try:
        cluster.start()
        with cluster.connect() as conn:
            conn.execute("SET password_encryption = 'scram-sha-256'")
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
                    sql.Identifier(ROLE), sql.Literal(SECRET)
                )
            )
            # The one-URL set-up: this login creates tenantry's schema and session login.
            conn.execute(
                sql.SQL("GRANT CREATE ON DATABASE postgres TO {}").format(sql.Identifier(ROLE))
            )
        (cluster.datadir / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        with cluster.connect() as conn:
            conn.execute("SELECT pg_reload_conf()")
        yield cluster
    finally:
        cluster.destroy()


def _tenantry(cluster: PgCluster) -> Tenantry:
    url = f"postgresql+psycopg://{ROLE}:${{TT_NASTY_PW}}@127.0.0.1:{cluster.port}/postgres"
    return Tenantry(TenantryConfig(stores={"default": StoreConfig("default", url)}))


def test_the_secret_logs_in(password_server: PgCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TT_NASTY_PW", SECRET)
    t = _tenantry(password_server)
    try:
        admin = t.default_store.admin_engine()
        with admin.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar() == ROLE
        assert admin.url.password == SECRET
        assert (admin.url.host, admin.url.port) == ("127.0.0.1", password_server.port)
        # Sessions log in as the login tenantry created, with its derived password.
        with t.default_store.engine().connect() as conn:
            login = conn.execute(text("SELECT current_user")).scalar()
        assert login == t.default_store.session_login != ROLE
    finally:
        t.close()


async def test_the_secret_logs_in_async(
    password_server: PgCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TT_NASTY_PW", SECRET)
    t = _tenantry(password_server)
    try:
        async with t.default_store.async_engine().connect() as conn:
            login = (await conn.execute(text("SELECT current_user"))).scalar()
            assert login == t.default_store.session_login
    finally:
        await t.aclose()


def test_a_wrong_password_is_refused_without_showing_either(
    password_server: PgCluster,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = SECRET.replace("Hunter2", "Hunter3")
    monkeypatch.setenv("TT_NASTY_PW", wrong)
    t = _tenantry(password_server)
    try:
        with caplog.at_level(logging.DEBUG), pytest.raises(OperationalError) as info:
            t.default_store.admin_engine().connect()  # the login is refused
        message = str(info.value)
        assert "password authentication failed" in message
        engine_url = t.default_store.admin_engine().url
        for shown in (
            message,
            caplog.text,
            repr(t.default_store),
            repr(engine_url),
            mask_url(engine_url),
        ):
            assert wrong not in shown
            assert "Prod#Secret" not in shown
    finally:
        t.close()

"""Fixtures: every test gets a fresh SQLite directory or PostgreSQL database.

PostgreSQL tests run against ``TENANTRY_TEST_PG_URL`` (default: postgres on
127.0.0.1:5432). Each test clones a per-worker template database (``CREATE
DATABASE ... TEMPLATE``) and drops it, with any tenant databases it made,
afterwards. When ``CI=true`` an unreachable server fails the run; locally the
PostgreSQL tests are skipped with a loud reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

import tests.models  # noqa: F401  - registers the test tables on TenantBase/GlobalBase
from tenantry import StoreConfig, Tenantry, TenantryConfig

PG_URL = os.environ.get("TENANTRY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() == "true"
BACKENDS = ["sqlite", "postgresql"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "postgresql" in item.name or item.get_closest_marker("postgres"):
            item.add_marker(pytest.mark.postgres)


def _pg_connect(dbname: str | None = None) -> psycopg.Connection[Any]:
    url = make_url(PG_URL)
    return psycopg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password,
        dbname=dbname or url.database or "postgres",
        autocommit=True,
        connect_timeout=5,
    )


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The server URL; fails (CI) or skips (locally) when it cannot be reached."""
    try:
        with _pg_connect() as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL at {make_url(PG_URL).render_as_string()} is unreachable: {exc}"
        if IN_CI:
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    return PG_URL


@pytest.fixture(scope="session")
def pg_template(pg_server: str, worker_id: str) -> Iterator[str]:
    name = f"tt_tpl_{worker_id}_{uuid.uuid4().hex[:6]}"
    with _pg_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with _pg_connect(name) as conn:
        conn.execute("CREATE SCHEMA tenantry")
    yield name
    with _pg_connect() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def pg_database(pg_template: str) -> Iterator[str]:
    """A fresh database for one test; returns its SQLAlchemy URL."""
    name = f"tt_{uuid.uuid4().hex[:10]}"
    with _pg_connect() as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(pg_template)
            )
        )
    yield (
        make_url(PG_URL)
        .set(drivername="postgresql+psycopg", database=name)
        .render_as_string(hide_password=False)
    )
    with _pg_connect() as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = %s OR datname LIKE %s",
            (name, name + "\\_%"),
        ).fetchall()
        for (db,) in rows:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
            )


def make_config(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, **store: Any
) -> TenantryConfig:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'data' / 'main.db'}"
    else:
        url = request.getfixturevalue("pg_database")
    return TenantryConfig(
        stores={"default": StoreConfig("default", url, **store)}, data_dir=str(tmp_path)
    )


TenantryFactory = Callable[..., Tenantry]


@pytest.fixture
def make_tenantry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TenantryFactory]:
    """Build Tenantry objects on a fresh database of the requested backend; closes them."""
    made: list[Tenantry] = []

    def factory(backend: str, config: TenantryConfig | None = None, **store: Any) -> Tenantry:
        t = Tenantry(config or make_config(backend, request, tmp_path, **store))
        made.append(t)
        return t

    yield factory
    for t in made:
        t.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def tenantry(make_tenantry: TenantryFactory, backend: str) -> Tenantry:
    return make_tenantry(backend)


def modes_for(backend: str) -> list[str]:
    return ["shared", "schema", "database"] if backend == "postgresql" else ["shared", "database"]


ALL_CASES = [(b, m) for b in BACKENDS for m in modes_for(b)]

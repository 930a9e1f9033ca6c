"""Fixtures: every test gets a fresh SQLite directory or PostgreSQL database.

PostgreSQL tests run against a throwaway server that each test process starts
for itself, tuned for tests (``tests/pgserver.py``), or against
``TENANTRY_TEST_PG_URL`` when that is set. Each test clones a per-process
template database (``CREATE DATABASE ... TEMPLATE``); after the test's own
teardown (its Tenantry objects closed) that database and any tenant databases
it made are dropped on a background thread. When no server can be had, a run
with ``CI=true`` fails; locally the PostgreSQL tests are skipped with a loud
reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

import tests.models  # noqa: F401  - registers the test tables on TenantBase/GlobalBase
from tenantry import StoreConfig, Tenantry, TenantryConfig
from tests.pgbouncer import pgbouncer, pgbouncer_server  # noqa: F401  - fixtures
from tests.pgserver import Dropper, SuiteServer, connect, start_suite_server

IN_CI = os.environ.get("CI", "").lower() == "true"
BACKENDS = ["sqlite", "postgresql"]

_TO_DROP = pytest.StashKey[list[tuple[Dropper, str]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-smoke",
        action="store_true",
        help="run only the benchmark smoke tests (marked bench_smoke), as make bench-smoke does",
    )


#: ``make test-lowest`` sets this: at the lowest supported versions an asyncio
#: psycopg connection is now and then garbage-collected while still open
#: (psycopg's ResourceWarning, which pytest reports as an unraisable exception).
#: That one warning is not an error there; at the locked versions it is.
_LOWEST_IGNORE = (
    r"ignore:Exception ignored in. <function BaseConnection\.__del__"
    ":pytest.PytestUnraisableExceptionWarning"
)


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("TENANTRY_LOWEST_VERSIONS") == "1":
        config.addinivalue_line("filterwarnings", _LOWEST_IGNORE)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks PostgreSQL cases; keeps the benchmark smokes out of the suite.

    A benchmark smoke runs for minutes on its own: CI runs it as a separate step
    (``make bench-smoke``), so a plain run deselects it and ``--bench-smoke``
    selects nothing else.
    """
    want_bench = bool(config.getoption("--bench-smoke"))
    kept: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        if "postgresql" in item.name or item.get_closest_marker("postgres"):
            item.add_marker(pytest.mark.postgres)
        is_bench = item.get_closest_marker("bench_smoke") is not None
        (kept if is_bench == want_bench else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture(scope="session")
def _pg_suite_server() -> Iterator[SuiteServer]:
    server = start_suite_server()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def pg_server(_pg_suite_server: SuiteServer) -> str:
    """The server URL; fails (CI) or skips (locally) when there is no server."""
    if _pg_suite_server.url is None:
        message = "; ".join(_pg_suite_server.problems)
        if IN_CI:
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    return _pg_suite_server.url


@pytest.fixture(scope="session")
def _pg_dropper(pg_server: str) -> Iterator[Dropper]:
    dropper = Dropper(pg_server)
    try:
        yield dropper
    finally:
        dropper.close()


@pytest.fixture(scope="session")
def pg_template(pg_server: str, worker_id: str) -> Iterator[str]:
    name = f"tt_tpl_{worker_id}_{uuid.uuid4().hex[:6]}"
    with connect(pg_server) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with connect(pg_server, name) as conn:
        conn.execute("CREATE SCHEMA tenantry")
    yield name
    with connect(pg_server) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(autouse=True)
def _drop_test_databases(request: pytest.FixtureRequest) -> Iterator[None]:
    """Drops the test's databases after every other fixture of the test is torn down.

    Autouse fixtures are set up first and torn down last, so the Tenantry
    objects (and their connections) are closed by then and ``DROP DATABASE``
    does not have to terminate them.
    """
    made: list[tuple[Dropper, str]] = []
    request.node.stash[_TO_DROP] = made
    yield
    for dropper, name in made:
        dropper.submit([name])


@pytest.fixture
def pg_database(
    request: pytest.FixtureRequest, pg_server: str, pg_template: str, _pg_dropper: Dropper
) -> str:
    """A fresh database for one test; returns its SQLAlchemy URL.

    Dropped with any tenant databases named after it once the test is over.
    """
    name = f"tt_{uuid.uuid4().hex[:10]}"
    with connect(pg_server) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(pg_template)
            )
        )
    request.node.stash[_TO_DROP].append((_pg_dropper, name))
    return (
        make_url(pg_server)
        .set(drivername="postgresql+psycopg", database=name)
        .render_as_string(hide_password=False)
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

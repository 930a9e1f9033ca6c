"""Moving a tenant between stores and modes: complete, verified, and resumable at every step."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import select
from sqlalchemy.engine import make_url

from tenantry import (
    IsolationMode,
    StoreConfig,
    Tenantry,
    TenantryConfig,
    TenantStatus,
    tenant_context,
)
from tenantry.catalog import moves_table
from tenantry.errors import MoveError, TenantMovingError
from tenantry.isolation import strategy_for
from tenantry.move import move_tenant, read_move
from tests.integration.lifecycle.test_transfer import content, populate
from tests.models import Note


@pytest.fixture
def two_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """``build(eu)``: a Tenantry with the PostgreSQL store "default" and a store "eu"
    that is another PostgreSQL database (``"postgresql"``) or a SQLite file."""
    main = request.getfixturevalue("pg_database")
    template = request.getfixturevalue("pg_template")
    made: list[Tenantry] = []

    def build(eu: str) -> Tenantry:
        if eu == "sqlite":
            eu_url = f"sqlite:///{tmp_path / 'eu' / 'eu.db'}"
        else:
            url = make_url(main)
            name = f"{url.database}_eu"  # dropped with the main database by the fixture
            with psycopg.connect(
                host=url.host,
                port=url.port or 5432,
                user=url.username,
                dbname="postgres",
                autocommit=True,
            ) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if exists.fetchone() is None:
                    conn.execute(
                        sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                            sql.Identifier(name), sql.Identifier(template)
                        )
                    )
            eu_url = url.set(database=name).render_as_string(hide_password=False)
        config = TenantryConfig(
            stores={"default": StoreConfig("default", main), "eu": StoreConfig("eu", eu_url)},
            catalog_cache_ttl=0.05,
            data_dir=str(tmp_path),
        )
        t = Tenantry(config)
        made.append(t)
        return t

    yield build
    for t in made:
        t.close()


def unfinished(data: dict[str, Any]) -> dict[str, Any]:
    """What a move must carry over: every row, and the jobs not finished."""
    return {**data, "jobs": [j for j in data["jobs"] if j[2] != "completed"]}


ROUTES = [
    # (store of the second store, from store, from mode, to store, to mode)
    ("postgresql", "default", "shared", "default", "schema"),  # one jobs table for both
    ("postgresql", "default", "schema", "eu", "database"),
    ("postgresql", "eu", "database", "default", "shared"),
    ("sqlite", "default", "schema", "eu", "shared"),
    ("sqlite", "eu", "database", "default", "schema"),
]


@pytest.mark.parametrize(("eu", "src", "src_mode", "dst", "dst_mode"), ROUTES)
def test_a_move_carries_every_row_and_job_and_removes_the_old_copy(
    two_stores: Any, eu: str, src: str, src_mode: str, dst: str, dst_mode: str
) -> None:
    t: Tenantry = two_stores(eu)
    t.create_tenant("acme", isolation=src_mode, store=src)
    populate(t, "acme", running=False)
    t.create_tenant("other", isolation="shared", store=dst)  # a neighbour on the target
    populate(t, "other", running=False)
    before, neighbour = content(t, "acme"), content(t, "other")

    result = move_tenant(t, "acme", to_store=dst, isolation=dst_mode)

    assert (result.tenant.store, result.tenant.isolation) == (dst, IsolationMode(dst_mode))
    assert result.tenant.status is TenantStatus.ACTIVE
    assert result.rows == {"notes": 5, "products": 3, "reviews": 4}
    assert unfinished(content(t, "acme")) == unfinished(before)
    assert content(t, "other") == neighbour
    assert read_move(t, "acme") is None
    old_store = t.store(src)
    if src_mode != "shared":  # shared rows are checked through the content above
        assert strategy_for(src_mode).leftover(old_store, "acme", t.tenant_metadata) is None
    with tenant_context("acme"), t.session() as s:  # served again, writable
        s.add(Note(body="after the move"))
        s.commit()


STEPS = ["paused", "copied", "verified", "switched", "cleaned"]


class Crash(Exception):
    """Stands for the process dying after a step."""


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize(
    ("src", "src_mode", "dst", "dst_mode"),
    [("default", "schema", "eu", "database"), ("default", "shared", "default", "schema")],
)
def test_a_move_stopped_after_any_step_is_resumed_without_loss_or_duplicates(
    two_stores: Any, step: str, src: str, src_mode: str, dst: str, dst_mode: str
) -> None:
    t: Tenantry = two_stores("postgresql")
    t.create_tenant("acme", isolation=src_mode, store=src)
    populate(t, "acme", running=False)
    before = content(t, "acme")

    def crash(done: str) -> None:
        if done == step:
            raise Crash(done)

    with pytest.raises(Crash):
        move_tenant(t, "acme", to_store=dst, isolation=dst_mode, after_step=crash)

    fresh: Tenantry = two_stores("postgresql")  # a new process
    tenant = fresh.get_tenant("acme")
    assert tenant.status is TenantStatus.MOVING
    switched = STEPS.index(step) >= STEPS.index("switched")
    expected = (dst, dst_mode) if switched else (src, src_mode)
    assert (tenant.store, tenant.isolation.value) == expected  # readable in one place
    with tenant_context("acme"), pytest.raises(TenantMovingError):
        fresh.session()

    result = move_tenant(fresh, "acme")  # resume: no target needed
    assert result.resumed
    assert (result.tenant.store, result.tenant.isolation.value) == (dst, dst_mode)
    assert result.tenant.status is TenantStatus.ACTIVE
    assert unfinished(content(fresh, "acme")) == unfinished(before)


def test_an_interrupted_move_can_be_aborted(two_stores: Any) -> None:
    t: Tenantry = two_stores("postgresql")
    t.create_tenant("acme", isolation="schema")
    populate(t, "acme", running=False)
    before = content(t, "acme")
    t.suspend_tenant("acme")

    def crash(done: str) -> None:
        if done == "copied":
            raise Crash(done)

    with pytest.raises(Crash):
        move_tenant(t, "acme", to_store="eu", isolation="database", after_step=crash)
    assert strategy_for("database").leftover(t.store("eu"), "acme", t.tenant_metadata)
    result = move_tenant(t, "acme", abort=True)
    assert result.aborted
    tenant = t.get_tenant("acme")
    assert (tenant.store, tenant.isolation, tenant.status) == (
        "default",
        IsolationMode.SCHEMA,
        TenantStatus.SUSPENDED,  # the status from before the move
    )
    assert strategy_for("database").leftover(t.store("eu"), "acme", t.tenant_metadata) is None
    t.resume_tenant("acme")
    assert content(t, "acme") == before
    with t.catalog.engine.connect() as conn:
        assert conn.execute(select(moves_table)).all() == []


def test_a_move_is_refused_when_it_makes_no_sense(two_stores: Any) -> None:
    t: Tenantry = two_stores("sqlite")
    t.create_tenant("acme", isolation="schema")
    with pytest.raises(MoveError, match="already schema on store 'default'"):
        move_tenant(t, "acme", isolation="schema")
    with pytest.raises(Exception, match="needs PostgreSQL"):
        move_tenant(t, "acme", to_store="eu", isolation="schema")
    with pytest.raises(MoveError, match="not being moved"):
        move_tenant(t, "acme", abort=True)

    def crash(done: str) -> None:
        raise Crash(done)

    with pytest.raises(Crash):
        move_tenant(t, "acme", to_store="eu", isolation="database", after_step=crash)
    with pytest.raises(MoveError, match="resume that move"):
        move_tenant(t, "acme", to_store="eu", isolation="shared")
    assert t.get_tenant("acme").status is TenantStatus.MOVING
    assert move_tenant(t, "acme").tenant.status is TenantStatus.ACTIVE


def test_a_running_job_is_waited_for_then_the_move_gives_up_cleanly(two_stores: Any) -> None:
    t: Tenantry = two_stores("postgresql")
    t.create_tenant("acme", isolation="schema")
    populate(t, "acme", running=True)  # one job claimed by a worker that never finishes
    with pytest.raises(MoveError, match="still has 1 running job"):
        move_tenant(t, "acme", to_store="eu", isolation="database", drain_timeout=0.3)
    # Nothing was copied yet: aborting leaves it where it was, active.
    move_tenant(t, "acme", abort=True)
    assert t.get_tenant("acme").status is TenantStatus.ACTIVE
    assert t.get_tenant("acme").store == "default"

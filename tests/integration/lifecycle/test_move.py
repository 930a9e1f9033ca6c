"""Moving a tenant between stores and modes: complete, verified, and resumable at every step."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Uuid,
    func,
    select,
    text,
)
from sqlalchemy import Table as SaTable
from sqlalchemy.engine import make_url

from tenantry import (
    IsolationMode,
    Queue,
    StoreConfig,
    Tenantry,
    TenantryConfig,
    TenantStatus,
    tenant_context,
)
from tenantry.errors import MoveError, TenantMovingError
from tenantry.lifecycle.move import (
    STEPS,
    MoveStep,
    TableDelta,
    move_keys_table,
    move_tenant,
    read_move,
)
from tenantry.queue.job import PENDING_STATES
from tenantry.tenancy.catalog import moves_table
from tenantry.tenancy.isolation import strategy_for
from tenantry.tenancy.models import tenant_metadata
from tests.integration.lifecycle.test_transfer import Ping, content, populate, registry
from tests.models import Note, Product, Review


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


def write_while_served(t: Tenantry, tenant_id: str, tag: str = "") -> None:
    """Inserts, updates and deletes in every table, and a new job, as the app would make them.

    Against the tables of :func:`populate`: 1 note inserted, 1 updated, 1
    deleted; 1 product inserted, 1 updated; 2 reviews inserted (one of the
    new product, one of an old one), 1 deleted.
    """
    with tenant_context(tenant_id), t.session() as s:
        notes = s.scalars(select(Note).order_by(Note.id)).all()
        products = s.scalars(select(Product).order_by(Product.id)).all()
        reviews = s.scalars(select(Review).order_by(Review.id)).all()
        s.add(Note(body=f"written during the bulk copy{tag}"))
        notes[0].body = f"changed during the bulk copy{tag}"
        s.delete(notes[-1])
        fresh = Product(name=f"new product{tag}", price_cents=4200)
        s.add(fresh)
        products[0].price_cents = 123456
        s.flush()
        s.add(Review(product_id=fresh.id, stars=5))
        s.add(Review(product_id=products[-1].id, stars=2))
        s.delete(reviews[0])
        s.commit()
    with tenant_context(tenant_id):
        Queue(t, registry).enqueue("ping", Ping(n=7))


WRITTEN = {
    "notes": TableDelta(inserted=1, updated=1, deleted=1),
    "products": TableDelta(inserted=1, updated=1, deleted=0),
    "reviews": TableDelta(inserted=2, updated=0, deleted=1),
}


@pytest.mark.parametrize(("eu", "src", "src_mode", "dst", "dst_mode"), ROUTES)
def test_writes_made_during_the_bulk_copy_arrive_and_only_they_are_copied_in_the_pause(
    two_stores: Any, eu: str, src: str, src_mode: str, dst: str, dst_mode: str
) -> None:
    t: Tenantry = two_stores(eu)
    t.create_tenant("acme", isolation=src_mode, store=src)
    populate(t, "acme", running=False)
    t.create_tenant("other", isolation="shared", store=dst)  # keys taken on a shared target
    populate(t, "other", running=False)
    pending = {s.value for s in PENDING_STATES}
    waiting = sum(1 for j in content(t, "acme")["jobs"] if j[2] in pending)
    seen: list[TenantStatus] = []

    def served(done: str) -> None:
        if done == "bulk-copied":  # the snapshot is in the target; the tenant is still served
            seen.append(t.get_tenant("acme").status)
            write_while_served(t, "acme")

    result = move_tenant(t, "acme", to_store=dst, isolation=dst_mode, after_step=served)

    assert seen == [TenantStatus.ACTIVE]
    assert result.bulk_rows == 5 + 3 + 4  # populate's rows, copied while served
    assert result.delta == WRITTEN  # the pause wrote exactly what changed, nothing else
    assert result.delta_rows == 8
    shares_jobs = src == dst and "database" not in (src_mode, dst_mode)
    assert result.jobs == (0 if shares_jobs else waiting + 1)  # and the one enqueued meanwhile
    assert result.rows == {"notes": 5, "products": 4, "reviews": 5}
    assert result.pause_seconds <= result.total_seconds
    with tenant_context("acme"), t.session() as s:
        assert sorted(s.scalars(select(Note.body)).all()) == [
            "acme note 1 ünïcode",
            "acme note 2 ünïcode",
            "acme note 3 ünïcode",
            "changed during the bulk copy",
            "written during the bulk copy",
        ]
        reviews = s.scalars(select(Review)).all()
        assert sorted((r.product.name, r.product.price_cents, r.stars) for r in reviews) == [
            ("acme p0", 123456, 4),  # (p0, 1) was deleted, p0's price changed
            ("acme p1", 100, 2),
            ("acme p2", 200, 2),  # new, of an old product
            ("acme p2", 200, 3),
            ("new product", 4200, 5),  # new, of a new product
        ]
    jobs = [j for j in content(t, "acme")["jobs"] if j[2] != "completed"]
    assert sum(1 for j in jobs if '"n": 7' in j[1]) == 1  # the job enqueued meanwhile, once
    assert read_move(t, "acme") is None


WRITER_ROUTES = [
    ("postgresql", "default", "schema", "eu", "database"),
    ("sqlite", "eu", "database", "default", "shared"),  # written in SQLite, renumbered
    ("sqlite", "default", "schema", "eu", "shared"),  # into SQLite
]


@pytest.mark.parametrize(("eu", "src", "src_mode", "dst", "dst_mode"), WRITER_ROUTES)
def test_a_concurrent_writer_loses_nothing(
    two_stores: Any, eu: str, src: str, src_mode: str, dst: str, dst_mode: str
) -> None:
    """A thread keeps writing while the bulk copy runs; all it committed is in the new copy."""
    t: Tenantry = two_stores(eu)
    t.create_tenant("acme", isolation=src_mode, store=src)
    with tenant_context("acme"), t.session() as s:
        s.add_all(Note(body=f"seed {i}") for i in range(2000))
        s.commit()
    stop = threading.Event()
    committed: dict[int, str] = {}  # what the writer knows the tenant has, by note id
    failures: list[BaseException] = []
    counter = {"writes": 0}

    def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                # Decided and read before the commit: after it, touching the ORM
                # objects would load them again, which the pause may refuse.
                changed = next(iter(committed)) if n % 3 == 0 and committed else None
                gone = next(reversed(committed)) if n % 5 == 0 and len(committed) > 1 else None
                with tenant_context("acme"), t.session() as s:
                    note = Note(body=f"w{n}")
                    s.add(note)
                    s.flush()
                    new_id = note.id
                    if changed is not None:  # change one written before
                        s.get(Note, changed).body = f"w{n} changed"  # type: ignore[union-attr]
                    if gone is not None:
                        s.delete(s.get(Note, gone))
                    s.commit()
                    if changed is not None:
                        committed[changed] = f"w{n} changed"
                    if gone is not None:
                        del committed[gone]
                    committed[new_id] = f"w{n}"
                    counter["writes"] += 1
            except TenantMovingError:
                stop.wait(0.01)
            except BaseException as exc:  # reported by the test
                failures.append(exc)
                return

    thread = threading.Thread(target=writer)

    def during(done: str) -> None:
        if done == "started":
            thread.start()
        if done == "bulk-copied":  # more writes after the snapshot, before the pause
            target = counter["writes"] + 20
            while counter["writes"] < target and not failures:
                stop.wait(0.01)
        if done == "paused":
            # The writer stops here: its ids are the old copy's (renumbered in shared
            # tables), and a transaction it began before the pause ends before the delta.
            stop.set()
            thread.join()

    try:
        result = move_tenant(t, "acme", to_store=dst, isolation=dst_mode, after_step=during)
    finally:
        stop.set()
        thread.join()
    assert not failures
    assert counter["writes"] >= 20
    assert 0 < result.delta_rows < result.bulk_rows
    with tenant_context("acme"), t.session() as s:
        found = s.scalars(select(Note.body).where(Note.body.like("w%"))).all()
    assert sorted(found) == sorted(committed.values())  # by value: keys may be renumbered
    with tenant_context("acme"), t.session() as s:
        assert s.scalar(select(func.count()).where(Note.body.like("seed %"))) == 2000


KILL_ROUTES = [
    ("postgresql", "default", "schema", "eu", "database"),
    ("postgresql", "default", "shared", "default", "schema"),  # one jobs table for both
    ("postgresql", "eu", "database", "default", "shared"),  # keys renumbered
    ("sqlite", "default", "schema", "eu", "shared"),  # renumbered, in SQLite
]


class Crash(Exception):
    """Stands for the process dying after a step."""


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize(("eu", "src", "src_mode", "dst", "dst_mode"), KILL_ROUTES)
def test_a_move_stopped_after_any_step_is_resumed_without_loss_or_duplicates(
    two_stores: Any, step: str, eu: str, src: str, src_mode: str, dst: str, dst_mode: str
) -> None:
    t: Tenantry = two_stores(eu)
    t.create_tenant("acme", isolation=src_mode, store=src)
    populate(t, "acme", running=False)
    t.create_tenant("other", isolation="shared", store=dst)
    populate(t, "other", running=False)

    expected_content: list[dict[str, Any]] = []

    def crash(done: str) -> None:
        if done == "bulk-copied":
            write_while_served(t, "acme")  # the delta
            expected_content.append(content(t, "acme"))
        if done == step:
            raise Crash(done)

    with pytest.raises(Crash):
        move_tenant(t, "acme", to_store=dst, isolation=dst_mode, after_step=crash)

    fresh: Tenantry = two_stores(eu)  # a new process
    tenant = fresh.get_tenant("acme")
    served = STEPS.index(step) < STEPS.index("paused")
    switched = STEPS.index(step) >= STEPS.index("switched")
    expected = (dst, dst_mode) if switched else (src, src_mode)
    assert (tenant.store, tenant.isolation.value) == expected  # readable in one place
    if served:  # still served from the old copy, and written to
        assert tenant.status is TenantStatus.ACTIVE
        assert read_move(fresh, "acme").step is MoveStep.BULK  # type: ignore[union-attr]
        write_while_served(fresh, "acme", " (after the crash)")
        expected_content[:] = [content(fresh, "acme")]
    else:
        assert tenant.status is TenantStatus.MOVING
        with tenant_context("acme"), pytest.raises(TenantMovingError):
            fresh.session()
    (before,) = expected_content

    result = move_tenant(fresh, "acme")  # resume: no target needed
    assert result.resumed
    assert (result.tenant.store, result.tenant.isolation.value) == (dst, dst_mode)
    assert result.tenant.status is TenantStatus.ACTIVE
    assert unfinished(content(fresh, "acme")) == unfinished(before)
    if not switched:
        # A crash before the pause: the bulk copy is made again, with the writes in it.
        # A crash after the delta was written: nothing is written twice.
        assert result.delta_rows == (8 if step == "paused" else 0)
    assert read_move(fresh, "acme") is None
    if dst_mode == "shared":
        with fresh.store(dst).admin_engine().connect() as conn:
            assert conn.execute(select(move_keys_table)).all() == []


def test_an_interrupted_move_can_be_aborted(two_stores: Any) -> None:
    t: Tenantry = two_stores("postgresql")
    t.create_tenant("acme", isolation="schema")
    populate(t, "acme", running=False)
    before = content(t, "acme")
    t.suspend_tenant("acme")

    def crash(done: str) -> None:
        if done == "delta-copied":
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
    assert t.get_tenant("acme").status is TenantStatus.ACTIVE  # stopped before the pause
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


def test_a_delta_that_collides_on_a_unique_value_falls_back_to_a_full_copy(
    two_stores: Any,
) -> None:
    """Two rows swap a unique value during the bulk copy: updating them one by one in the
    target would collide, so the pause copies all rows instead, and the result is right."""
    metadata = tenant_metadata()
    slugs = SaTable(
        "slugs",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("tenant_id", String(40), nullable=False),
        Column("slug", String(20), nullable=False, unique=True),
    )
    base: Tenantry = two_stores("postgresql")
    t = Tenantry(base.config, tenant_metadata=metadata)
    try:
        t.create_tenant("acme", isolation="schema")
        rows = [{"id": i, "tenant_id": "acme", "slug": f"s{i}"} for i in range(1, 6)]
        with tenant_context("acme"), t.session() as s:
            s.execute(slugs.insert(), rows)
            s.commit()

        def swap(done: str) -> None:
            if done == "bulk-copied":
                with tenant_context("acme"), t.session() as s:
                    s.execute(slugs.update().where(slugs.c.id == 1).values(slug="tmp"))
                    s.execute(slugs.update().where(slugs.c.id == 2).values(slug="s1"))
                    s.execute(slugs.update().where(slugs.c.id == 1).values(slug="s2"))
                    s.commit()

        result = move_tenant(t, "acme", to_store="eu", isolation="database", after_step=swap)
        with tenant_context("acme"), t.session() as s:
            moved = dict(s.execute(select(slugs.c.id, slugs.c.slug)).tuples().all())
    finally:
        t.close()
    assert moved == {1: "s2", 2: "s1", 3: "s3", 4: "s4", 5: "s5"}
    assert result.delta == {"slugs": TableDelta(inserted=5)}  # all of them, in the pause


def test_a_move_stopped_in_the_bulk_copy_can_be_aborted_and_keeps_the_status(
    two_stores: Any,
) -> None:
    t: Tenantry = two_stores("postgresql")
    t.create_tenant("acme", isolation="database", store="eu")
    populate(t, "acme", running=False)
    before = content(t, "acme")

    def crash(done: str) -> None:
        if done == "bulk-copied":
            t.suspend_tenant("acme")  # changed meanwhile by someone else
            raise Crash(done)

    with pytest.raises(Crash):
        move_tenant(t, "acme", to_store="default", isolation="shared", after_step=crash)
    with t.store("default").admin_engine().connect() as conn:
        assert conn.execute(select(func.count()).select_from(move_keys_table)).scalar_one() == 12
    result = move_tenant(t, "acme", abort=True)
    assert result.aborted
    assert result.pause_seconds == 0.0  # it never was paused
    tenant = t.get_tenant("acme")
    assert (tenant.store, tenant.isolation, tenant.status) == (
        "eu",
        IsolationMode.DATABASE,
        TenantStatus.SUSPENDED,  # as it is now, not as it was when the move started
    )
    assert read_move(t, "acme") is None
    with t.store("default").admin_engine().connect() as conn:
        assert conn.execute(select(func.count()).select_from(move_keys_table)).scalar_one() == 0
    t.resume_tenant("acme")
    assert content(t, "acme") == before
    with tenant_context("acme"), t.session() as s:  # nothing of it is left in shared tables
        assert s.scalar(select(func.count()).select_from(Note)) == 5
    with t.store("default").admin_engine().connect() as conn:
        assert conn.execute(select(func.count()).where(Note.tenant_id == "acme")).scalar_one() == 0


TYPED_ROUTES = [
    ("postgresql", "database"),  # hashed by both servers
    ("postgresql", "shared"),  # renumbered: hashed in Python
    ("sqlite", "database"),  # across dialects: hashed in Python
]


@pytest.mark.parametrize(("eu", "dst_mode"), TYPED_ROUTES)
def test_values_of_every_kind_compare_equal_and_only_a_real_change_is_copied(
    two_stores: Any, eu: str, dst_mode: str
) -> None:
    """No type makes equal rows look different (which would rewrite them in every pause, or
    fail the verification): JSON written with other spacing and key order, time zones,
    decimals, bytes, floats. One changed row is the whole delta."""
    metadata = tenant_metadata()
    kinds = SaTable(
        "kinds",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("tenant_id", String(40), nullable=False),
        Column("doc", JSON),
        Column("at", DateTime(timezone=True)),
        Column("day", Date),
        Column("price", Numeric(12, 2)),
        Column("ratio", Float),
        Column("blob", LargeBinary),
        Column("flag", Boolean),
        Column("ref", Uuid),
        Column("label", String(50)),
    )
    base: Tenantry = two_stores(eu)
    t = Tenantry(base.config, tenant_metadata=metadata)
    try:
        t.create_tenant("acme", isolation="schema")
        zones = [timezone(timedelta(hours=h)) for h in range(-2, 3)]
        with tenant_context("acme"), t.session() as s:
            for i in range(1, 31):
                s.execute(
                    kinds.insert().values(
                        id=i,
                        tenant_id="acme",
                        at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=zones[i % 5]),
                        day=date(2026, 2, i % 28 + 1),
                        price=Decimal(f"{i}.{i % 10}0"),
                        ratio=1 / i,
                        blob=bytes(range(i)),
                        flag=i % 2 == 0,
                        ref=uuid.UUID(int=i),
                        label=None if i % 4 == 0 else f"ünï {i}",
                    )
                )
            # JSON as an application may write it: its own spacing and key order.
            s.execute(
                text("UPDATE kinds SET doc = CAST(:d AS JSON)"),
                {"d": '{"b": [1, 2.5,   {"z": null}],   "a": "x"}'},
            )
            s.commit()

        def change(done: str) -> None:
            if done == "bulk-copied":
                with tenant_context("acme"), t.session() as s:
                    s.execute(kinds.update().where(kinds.c.id == 7).values(price=Decimal("0.01")))
                    s.commit()

        result = move_tenant(t, "acme", to_store="eu", isolation=dst_mode, after_step=change)
        with tenant_context("acme"), t.session() as s:
            prices = dict(s.execute(select(kinds.c.label, kinds.c.price)).tuples().all())
            docs = s.scalars(select(kinds.c.doc)).all()
    finally:
        t.close()
    assert result.delta == {"kinds": TableDelta(updated=1)}
    assert prices["ünï 7"] == Decimal("0.01")
    assert docs == [{"b": [1, 2.5, {"z": None}], "a": "x"}] * 30


def test_a_transaction_begun_before_the_pause_and_committed_during_it_is_copied(
    two_stores: Any,
) -> None:
    """A session opened just before the pause is not refused and may commit during the
    drain, later than the catalog cache's TTL: the delta waits for it (PostgreSQL)."""
    t: Tenantry = two_stores("postgresql")
    t.create_tenant("acme", isolation="schema")
    populate(t, "acme", running=False)
    began, done = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def late_writer() -> None:
        try:
            with tenant_context("acme"), t.session() as s:
                s.add(Note(body="committed during the pause"))
                s.flush()  # the transaction is open, its row written
                began.set()
                done.wait(0.8)  # longer than the TTL (0.05 s) and the rest of the drain
                s.commit()
        except BaseException as exc:  # reported by the test
            failures.append(exc)

    thread = threading.Thread(target=late_writer)

    def hook(step: str) -> None:
        if step == "bulk-copied":
            thread.start()
            assert began.wait(10)

    try:
        result = move_tenant(t, "acme", to_store="eu", isolation="database", after_step=hook)
    finally:
        done.set()
        thread.join()
    assert not failures
    assert result.delta["notes"] == TableDelta(inserted=1)
    assert result.delta_rows == 1
    with tenant_context("acme"), t.session() as s:
        assert s.scalar(select(func.count()).where(Note.body == "committed during the pause")) == 1


def test_a_second_run_of_the_same_move_is_refused_while_the_first_runs(two_stores: Any) -> None:
    t: Tenantry = two_stores("postgresql")
    t.create_tenant("acme", isolation="schema")
    populate(t, "acme", running=False)
    refused: list[str] = []

    def second_run(done: str) -> None:
        if done == "bulk-copied":  # the first run holds the move
            with pytest.raises(MoveError, match="being moved by another process") as info:
                move_tenant(t, "acme")
            refused.append(str(info.value))

    result = move_tenant(t, "acme", to_store="eu", isolation="database", after_step=second_run)
    assert refused
    assert result.tenant.store == "eu"
    assert read_move(t, "acme") is None
    # Released at the end: another move of the same tenant can start.
    assert move_tenant(t, "acme", to_store="default", isolation="schema").tenant.store == "default"

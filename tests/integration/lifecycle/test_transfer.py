"""Export and import of one tenant: round trips across modes and stores, hostile files."""

from __future__ import annotations

import hashlib
import json
import threading
import zipfile
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Integer,
    Interval,
    LargeBinary,
    Numeric,
    String,
    Table,
    Time,
    Uuid,
    insert,
    select,
    update,
)
from sqlalchemy.orm import selectinload

from tenantry import JobRegistry, Queue, Tenantry, tenant_context
from tenantry.errors import (
    ExportChecksumError,
    ExportCorruptError,
    ExportFormatError,
    ExportRevisionError,
    InvalidTenantId,
    TenantExistsError,
)
from tenantry.lifecycle.export import export_tenant
from tenantry.lifecycle.import_ import import_tenant
from tenantry.queue.schema import jobs_table
from tenantry.queue.sources import source_of
from tenantry.tenancy.isolation import strategy_for
from tenantry.tenancy.models import tenant_metadata
from tests.conftest import TenantryFactory
from tests.integration.lifecycle.conftest import LifecycleFactory
from tests.integration.lifecycle.support import add_revision
from tests.models import Note, Product, Review


class Ping(BaseModel):
    n: int = 0


registry = JobRegistry()


@registry.handler("ping")
def ping(ctx: Any, payload: Ping) -> None:
    return None


def populate(t: Tenantry, tenant_id: str, *, running: bool = True) -> None:
    """Rows in every test table (with foreign keys) and jobs in every state.

    ``running=False``: the job that would be ``running`` stays ``available``.
    """
    with tenant_context(tenant_id), t.session() as s:
        products = [Product(name=f"{tenant_id} p{i}", price_cents=100 * i) for i in range(3)]
        s.add_all(products)
        s.flush()
        s.add_all(Review(product_id=products[i % 3].id, stars=i + 1) for i in range(4))
        s.add_all(Note(body=f"{tenant_id} note {i} ünïcode") for i in range(5))
        s.commit()
    queue = Queue(t, registry)
    with tenant_context(tenant_id):
        for n in range(5):
            queue.enqueue("ping", Ping(n=n))
        queue.enqueue("ping", Ping(n=99), delay=3600)
    tenant = t.get_tenant(tenant_id)
    source = source_of(tenant, t.store(tenant.store))
    with source.engine().begin() as conn:
        ids = (
            conn.execute(
                select(jobs_table.c.id)
                .where(jobs_table.c.tenant_id == tenant_id, jobs_table.c.state == "available")
                .order_by(jobs_table.c.id)
            )
            .scalars()
            .all()
        )
        now = datetime.now(UTC)
        if running:
            conn.execute(
                update(jobs_table)
                .where(jobs_table.c.id == ids[0])
                .values(
                    state="running", attempt=1, lease_token="x", worker_id="w", lease_expires_at=now
                )
            )
        conn.execute(
            update(jobs_table)
            .where(jobs_table.c.id == ids[1])
            .values(state="completed", attempt=1, finished_at=now)
        )


def content(t: Tenantry, tenant_id: str) -> dict[str, Any]:
    """What the tenant's own sessions see, independent of surrogate ids."""
    with tenant_context(tenant_id), t.session() as s:
        reviews = s.scalars(select(Review).options(selectinload(Review.product))).all()
        data: dict[str, Any] = {
            "notes": sorted(s.scalars(select(Note.body)).all()),
            "products": sorted(s.execute(select(Product.name, Product.price_cents)).tuples().all()),
            "reviews": sorted((r.product.name, r.stars) for r in reviews),
            "tenant_ids": sorted(
                {
                    *s.scalars(select(Note.tenant_id)).all(),
                    *s.scalars(select(Product.tenant_id)).all(),
                }
            ),
        }
    tenant = t.get_tenant(tenant_id)
    source = source_of(tenant, t.store(tenant.store))
    with source.engine(write=False).connect() as conn:
        data["jobs"] = sorted(
            (r.kind, json.dumps(r.payload, sort_keys=True), r.state, r.attempt, r.worker_id)
            for r in conn.execute(select(jobs_table).where(jobs_table.c.tenant_id == tenant_id))
        )
    return data


def ids(t: Tenantry, tenant_id: str) -> dict[str, list[int]]:
    with tenant_context(tenant_id), t.session() as s:
        return {
            "notes": sorted(s.scalars(select(Note.id)).all()),
            "products": sorted(s.scalars(select(Product.id)).all()),
            "reviews": sorted(s.scalars(select(Review.id)).all()),
        }


def expected_after_import(before: dict[str, Any], new_id: str) -> dict[str, Any]:
    """Completed jobs stay behind; a running job comes back available, attempt counted."""
    jobs = []
    for kind, payload, state, attempt, _worker in before["jobs"]:
        if state == "completed":
            continue
        jobs.append((kind, payload, "available" if state == "running" else state, attempt, None))
    return {**before, "jobs": sorted(jobs), "tenant_ids": [new_id]}


ROUND_TRIPS = [
    # (source backend, source mode, target backend, target mode)
    ("sqlite", "shared", "sqlite", "database"),
    ("sqlite", "database", "postgresql", "schema"),
    ("postgresql", "shared", "postgresql", "schema"),
    ("postgresql", "schema", "postgresql", "database"),
    ("postgresql", "database", "sqlite", "shared"),
    ("postgresql", "schema", "postgresql", "shared"),
]


@pytest.mark.parametrize(("src", "src_mode", "dst", "dst_mode"), ROUND_TRIPS)
def test_round_trip_keeps_every_row_and_job(
    make_tenantry: TenantryFactory,
    tmp_path: Path,
    src: str,
    src_mode: str,
    dst: str,
    dst_mode: str,
) -> None:
    source = make_tenantry(src)
    source.create_tenant("acme", isolation=src_mode, settings={"plan": "pro"})
    populate(source, "acme")
    if src_mode == "shared":  # a neighbour whose rows must not come along
        source.create_tenant("other", isolation="shared")
        populate(source, "other")
    before = content(source, "acme")
    file = tmp_path / "acme.tenant"
    manifest = export_tenant(source, "acme", file)
    assert {t.name: t.rows for t in manifest.tables} == {"notes": 5, "products": 3, "reviews": 4}
    assert manifest.jobs.rows == 5  # the completed one stays behind

    target = source if dst == src else make_tenantry(dst)
    # On the same store the copy needs another id; into shared tables that already
    # hold acme's rows, its keys are renumbered.
    new_id = "acme" if target is not source else "acme_copy"
    result = import_tenant(target, file, as_id=new_id, isolation=dst_mode)
    assert result.tenant.is_active
    assert (result.tenant.isolation.value, result.tenant.settings) == (dst_mode, {"plan": "pro"})
    assert result.rows == {"notes": 5, "products": 3, "reviews": 4}
    after = content(target, new_id)
    assert after == expected_after_import(before, new_id)
    if dst_mode != "shared":
        assert ids(target, new_id) == ids(source, "acme")  # ids kept where the tables are its own
    if target is source:
        assert content(source, "acme") == before  # the original is untouched
    # New rows after an import get fresh ids (sequences moved past the imported ones).
    with tenant_context(new_id), target.session() as s:
        s.add(Note(body="after import"))
        s.commit()


def test_every_value_type_survives(make_tenantry: TenantryFactory, tmp_path: Path) -> None:
    metadata = tenant_metadata()
    kinds = Table(
        "kinds",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("tenant_id", String(40), nullable=False),
        Column("at", DateTime(timezone=True)),
        Column("day", Date),
        Column("clock", Time),
        Column("span", Interval),
        Column("money", Numeric(20, 6)),
        Column("blob", LargeBinary),
        Column("doc", JSON),
        Column("ratio", Float),
        Column("flag", Boolean),
        Column("ref", Uuid),
        Column("label", String(50)),
    )
    row = {
        "tenant_id": "acme",
        "at": datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC),
        "day": date(1999, 12, 31),
        "clock": time(13, 14, 15, 16),
        "span": timedelta(days=3, seconds=7, microseconds=9),
        "money": Decimal("12345678901234.000001"),
        "blob": bytes(range(256)),
        "doc": {"a": [1, 2.5, None, "x"], "$dt": "not a tag inside JSON"},
        "ratio": float("inf"),
        "flag": True,
        "ref": __import__("uuid").UUID("12345678-1234-5678-1234-567812345678"),
        "label": 'quote " and \\ and \n newline',
    }
    source = make_tenantry("postgresql")
    source = Tenantry(source.config, tenant_metadata=metadata)
    try:
        source.create_tenant("acme", isolation="schema")
        with tenant_context("acme"), source.session() as s:
            s.execute(insert(kinds).values(**row))
            s.execute(insert(kinds).values(tenant_id="acme"))  # all NULL
            s.commit()
        export_tenant(source, "acme", tmp_path / "kinds.tenant")
        import_tenant(source, tmp_path / "kinds.tenant", as_id="copy", isolation="database")
        with tenant_context("copy"), source.session() as s:
            got = s.execute(select(kinds).order_by(kinds.c.id)).mappings().all()
        assert {k: v for k, v in got[0].items() if k not in ("id", "tenant_id")} == {
            k: v for k, v in row.items() if k != "tenant_id"
        }
        assert got[0]["tenant_id"] == "copy"
        assert all(v is None for k, v in got[1].items() if k not in ("id", "tenant_id"))
    finally:
        source.close()


def test_export_is_one_snapshot_while_writes_go_on(
    make_tenantry: TenantryFactory, tmp_path: Path
) -> None:
    """Each write adds a product and its review in one transaction: a file that has
    a review must have its product, and as many of each (one snapshot of both tables)."""
    t = make_tenantry("postgresql")
    t.create_tenant("acme", isolation="schema")
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            with tenant_context("acme"), t.session() as s:
                product = Product(name="live")
                s.add(product)
                s.flush()
                s.add(Review(product_id=product.id, stars=5))
                s.commit()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        files = []
        for i in range(5):
            file = tmp_path / f"snap{i}.tenant"
            manifest = export_tenant(t, "acme", file)
            counts = {e.name: e.rows for e in manifest.tables}
            assert counts["products"] == counts["reviews"]
            files.append(file)
    finally:
        stop.set()
        thread.join()
    for i, file in enumerate(files):
        import_tenant(t, file, as_id=f"snap{i}", isolation="schema")  # FKs hold


# -- hostile files ---------------------------------------------------------------------
@pytest.fixture
def exported(make_tenantry: TenantryFactory, tmp_path: Path) -> tuple[Tenantry, Path]:
    t = make_tenantry("sqlite")
    t.create_tenant("acme", isolation="database")
    populate(t, "acme")
    file = tmp_path / "acme.tenant"
    export_tenant(t, "acme", file)
    return t, file


def _rewrite(src: Path, dst: Path, change: Any, *, fix_checksum: bool) -> Path:
    """Copy an export, changing members; optionally recompute the manifest checksum."""
    with zipfile.ZipFile(src) as zin:
        members = {n: zin.read(n) for n in zin.namelist()}
    change(members)
    if fix_checksum:
        members["checksum.sha256"] = hashlib.sha256(members["manifest.json"]).hexdigest().encode()
    with zipfile.ZipFile(dst, "w") as zout:
        for name, data in members.items():
            zout.writestr(name, data)
    return dst


def _manifest(members: dict[str, bytes]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(members["manifest.json"])
    return data


def _set_manifest(members: dict[str, bytes], data: dict[str, Any]) -> None:
    members["manifest.json"] = json.dumps(data).encode()


def _notes_member(members: dict[str, bytes]) -> str:
    return next(n for n in members if n.endswith("_notes.jsonl"))


def _edit_row(members: dict[str, bytes]) -> None:
    name = _notes_member(members)
    members[name] = members[name].replace(b"note 0", b"note X", 1)


def _edit_count(members: dict[str, bytes]) -> None:
    data = _manifest(members)
    data["tables"][0]["rows"] += 1
    _set_manifest(members, data)


def _version_2(members: dict[str, bytes]) -> None:
    data = _manifest(members)
    data["format_version"] = 2
    _set_manifest(members, data)


def _hostile_id(members: dict[str, bytes]) -> None:
    data = _manifest(members)
    data["tenant"]["id"] = "x'; DROP SCHEMA public --"
    _set_manifest(members, data)


def _no_manifest(members: dict[str, bytes]) -> None:
    del members["manifest.json"]


HOSTILE: list[tuple[str, Any, bool, type[Exception], str]] = [
    ("edited row", _edit_row, True, ExportChecksumError, "does not match its checksum"),
    ("edited manifest", _edit_count, False, ExportChecksumError, "checksum.sha256"),
    ("unknown version", _version_2, True, ExportFormatError, "format version 2"),
    ("hostile tenant id", _hostile_id, True, InvalidTenantId, "invalid tenant id"),
    ("missing manifest", _no_manifest, False, ExportCorruptError, "manifest.json is missing"),
]


def _nothing_changed(t: Tenantry, before: list[str], attempted: str) -> None:
    assert [x.id for x in t.list_tenants()] == before
    assert strategy_for("database").leftover(t.default_store, attempted, t.tenant_metadata) is None


@pytest.mark.parametrize(
    ("what", "change", "fix", "error", "message"), HOSTILE, ids=[h[0] for h in HOSTILE]
)
def test_a_tampered_file_is_refused_and_nothing_changes(
    exported: tuple[Tenantry, Path],
    tmp_path: Path,
    what: str,
    change: Any,
    fix: bool,
    error: type[Exception],
    message: str,
) -> None:
    t, file = exported
    bad = _rewrite(file, tmp_path / "bad.tenant", change, fix_checksum=fix)
    before = [x.id for x in t.list_tenants()]
    with pytest.raises(error, match=message):
        import_tenant(t, bad, as_id="fresh", isolation="database")
    _nothing_changed(t, before, "fresh")


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "empty", "not a zip"])
def test_a_damaged_file_is_refused_and_nothing_changes(
    exported: tuple[Tenantry, Path], tmp_path: Path, damage: str
) -> None:
    t, file = exported
    data = bytearray(file.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped byte":
        with zipfile.ZipFile(file) as zf:
            info = zf.getinfo(next(n for n in zf.namelist() if n.endswith("_notes.jsonl")))
        data[info.header_offset + 30 + len(info.filename) + 5] ^= 0xFF  # inside the data
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"PK\x03\x04 this is not really a zip file")
    bad = tmp_path / "bad.tenant"
    bad.write_bytes(bytes(data))
    before = [x.id for x in t.list_tenants()]
    with pytest.raises(ExportCorruptError):
        import_tenant(t, bad, as_id="fresh", isolation="database")
    _nothing_changed(t, before, "fresh")


def test_import_over_an_existing_tenant_is_refused(exported: tuple[Tenantry, Path]) -> None:
    t, file = exported
    before = content(t, "acme")
    with pytest.raises(TenantExistsError, match="already exists"):
        import_tenant(t, file)
    assert content(t, "acme") == before


def test_an_invalid_new_id_is_refused(exported: tuple[Tenantry, Path]) -> None:
    t, file = exported
    before = [x.id for x in t.list_tenants()]
    with pytest.raises(InvalidTenantId):
        import_tenant(t, file, as_id="../../etc")
    assert [x.id for x in t.list_tenants()] == before


def test_an_export_at_another_revision_is_refused(
    lifecycle_tenantry: LifecycleFactory, histories: tuple[Path, Path], tmp_path: Path
) -> None:
    t = lifecycle_tenantry("sqlite")
    t.create_tenant("acme", isolation="database")
    export_tenant(t, "acme", tmp_path / "acme.tenant")
    add_revision(histories[0], "n1", None, "pass")
    newer = lifecycle_tenantry("sqlite")
    with pytest.raises(ExportRevisionError, match=r"revision \(none\).*head is n1"):
        import_tenant(newer, tmp_path / "acme.tenant", as_id="copy")
    assert [x.id for x in newer.list_tenants()] == ["acme"]


def test_a_failing_load_removes_the_half_made_tenant(
    exported: tuple[Tenantry, Path], tmp_path: Path
) -> None:
    """A row the database refuses (a review of a missing product) fails the import whole."""
    t, file = exported

    def orphan_review(members: dict[str, bytes]) -> None:
        name = next(n for n in members if n.endswith("_reviews.jsonl"))
        rows = members[name].decode().splitlines()
        row = json.loads(rows[0])
        row[1] = 999_999  # product_id
        rows[0] = json.dumps(row, separators=(",", ":"))
        members[name] = ("\n".join(rows) + "\n").encode()
        data = _manifest(members)
        for entry in data["tables"]:
            if entry["file"] == name:
                entry["sha256"] = hashlib.sha256(members[name]).hexdigest()
        _set_manifest(members, data)

    bad = _rewrite(file, tmp_path / "orphan.tenant", orphan_review, fix_checksum=True)
    before = [x.id for x in t.list_tenants()]
    with pytest.raises(Exception, match="FOREIGN KEY"):
        import_tenant(t, bad, as_id="orphan", isolation="database")
    _nothing_changed(t, before, "orphan")

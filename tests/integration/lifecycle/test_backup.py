"""``tenantry tenants backup``: each mode's tool, and the backup restores to the same rows."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from tenantry import Tenantry, tenant_context
from tenantry.errors import BackupError
from tenantry.lifecycle.backup import backup_tenant
from tenantry.lifecycle.import_ import import_tenant
from tenantry.tenancy.binding import install_wall
from tests.conftest import TenantryFactory
from tests.models import Note


def _notes(t: Tenantry, tenant_id: str, *bodies: str) -> None:
    with tenant_context(tenant_id), t.session() as s:
        s.add_all(Note(body=b) for b in bodies)
        s.commit()


def _restore(t: Tenantry, dump: Path, *, into_store: bool = False) -> list[str]:
    """pg_restore into a new database (named so the fixture drops it); the notes there.

    *into_store*: the database first gets what a store database has that a schema
    dump refers to (the tenant binding's functions), as a restore into a store would.
    """
    url = make_url(t.default_store.config.url)
    name = f"{url.database}_restored"
    params = {"host": url.host, "port": url.port or 5432, "user": url.username}
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:  # type: ignore[arg-type]
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    if into_store:
        engine = create_engine(url.set(database=name))
        with engine.begin() as conn:
            install_wall(conn, t.default_store.prepare_wall().key)
        engine.dispose()
    done = subprocess.run(
        [
            "pg_restore",
            "--no-owner",
            "-h",
            str(url.host),
            "-p",
            str(url.port or 5432),
            "-U",
            str(url.username),
            "-d",
            name,
            str(dump),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with psycopg.connect(dbname=name, **params) as conn:  # type: ignore[arg-type]
        schemas = [
            r[0]
            for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 't\\_%'")
        ]
        table = f'"{schemas[0]}".notes' if schemas else "notes"
        return sorted(r[0] for r in conn.execute(f"SELECT body FROM {table}"))


def test_a_schema_tenant_is_dumped_alone(make_tenantry: TenantryFactory, tmp_path: Path) -> None:
    t = make_tenantry("postgresql")
    t.create_tenant("acme", isolation="schema")
    t.create_tenant("globex", isolation="schema")
    _notes(t, "acme", "a1", "a2")
    _notes(t, "globex", "g1")
    made = backup_tenant(t, "acme", tmp_path / "backups")
    assert made.method == "pg_dump --schema"
    assert made.path.suffix == ".dump"
    assert _restore(t, made.path, into_store=True) == ["a1", "a2"]  # and no schema of globex


def test_a_database_tenant_is_dumped(make_tenantry: TenantryFactory, tmp_path: Path) -> None:
    t = make_tenantry("postgresql")
    t.create_tenant("acme", isolation="database")
    _notes(t, "acme", "x", "y")
    made = backup_tenant(t, "acme", tmp_path)
    assert made.method == "pg_dump"
    assert _restore(t, made.path) == ["x", "y"]


def test_a_sqlite_tenant_file_is_copied_consistently(
    make_tenantry: TenantryFactory, tmp_path: Path
) -> None:
    t = make_tenantry("sqlite")
    t.create_tenant("acme", isolation="database")
    _notes(t, "acme", "one", "two")  # in the WAL, not yet in the main file
    made = backup_tenant(t, "acme", tmp_path / "b")
    assert made.method == "sqlite backup"
    with sqlite3.connect(made.path) as conn:
        assert sorted(r[0] for r in conn.execute("SELECT body FROM notes")) == ["one", "two"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_shared_tenant_is_exported(
    make_tenantry: TenantryFactory, tmp_path: Path, backend: str
) -> None:
    t = make_tenantry(backend)
    t.create_tenant("acme", isolation="shared")
    t.create_tenant("other", isolation="shared")
    _notes(t, "acme", "mine")
    _notes(t, "other", "not mine")
    made = backup_tenant(t, "acme", tmp_path)
    assert made.method == "export"
    import_tenant(t, made.path, as_id="restored")
    with tenant_context("restored"), t.session() as s:
        assert [n.body for n in s.query(Note)] == ["mine"]


def test_a_missing_pg_dump_is_a_clear_error(
    make_tenantry: TenantryFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = make_tenantry("postgresql")
    t.create_tenant("acme", isolation="schema")
    monkeypatch.setenv("PATH", str(tmp_path))  # no pg_dump here
    with pytest.raises(BackupError, match="pg_dump is not on PATH"):
        backup_tenant(t, "acme", tmp_path)
    assert list(tmp_path.glob("*.dump")) == []

"""``tenantry migrate`` as an operator runs it: scaffold, write a revision with Alembic, apply."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import inspect

from tenantry.cli.main import cli
from tests.integration.lifecycle.support import ADD_COLOR, UNIQUE_BODY


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("TENANTRY_CONFIG", "TENANTRY_DATABASE_URL", "TENANTRY_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def _alembic(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args], cwd=cwd, capture_output=True, text=True
    )


def _revision(project: Path, rev_id: str, body: str) -> Path:
    """``alembic revision`` in the scaffolded directory, then fill in upgrade()."""
    made = _alembic(
        "-c",
        "migrations/tenant/alembic.ini",
        "revision",
        "-m",
        rev_id,
        "--rev-id",
        rev_id,
        cwd=project,
    )
    assert made.returncode == 0, made.stderr
    (path,) = (project / "migrations" / "tenant" / "versions").glob(f"*{rev_id}*.py")
    text = path.read_text()
    indented = "\n".join("    " + line for line in body.strip().splitlines())
    path.write_text(
        text.replace("def upgrade() -> None:\n    pass", f"def upgrade() -> None:\n{indented}", 1)
    )
    return path


def _setup(project: Path) -> None:
    ok(run("migrate", "init", "migrations"))
    (project / "tenantry.toml").write_text(
        "[tenantry]\n"
        'tenant_metadata = "tests.models:TenantBase"\n'
        'tenant_migrations = "migrations/tenant"\n'
        'global_migrations = "migrations/global"\n\n'
        "[stores.default]\n"
        f'url = "sqlite:///{project / "data" / "main.db"}"\n'
    )


def test_scaffold_revision_status_and_migrate(project: Path) -> None:
    _setup(project)
    assert (project / "migrations" / "tenant" / "env.py").exists()
    assert (project / "migrations" / "global" / "script.py.mako").exists()
    for tid, mode in (("acme", "shared"), ("globex", "database"), ("initech", "database")):
        ok(run("tenants", "create", tid, "--isolation", mode))
    _revision(project, "c1", ADD_COLOR)

    status = json.loads(ok(run("migrate", "--status", "--json")).stdout)
    tenant_rows = [r for r in status if r["kind"] != "global"]
    assert {(r["target"], r["revision"], r["head"], r["behind"]) for r in tenant_rows} == {
        ("(shared tables on default)", None, "c1", True),
        ("globex", None, "c1", True),
        ("initech", None, "c1", True),
    }
    table = ok(run("migrate", "--status")).stdout
    assert "(none)" in table
    assert "c1" in table

    out = ok(run("migrate", "--parallel", "2")).stdout
    assert "globex" in out
    assert "upgraded" in out
    assert "3 upgraded" in out

    status = json.loads(ok(run("migrate", "--status", "--json")).stdout)
    assert {r["revision"] for r in status if r["kind"] != "global"} == {"c1"}
    assert "0 upgraded" not in ok(run("migrate")).stdout  # nothing to do
    assert "4 already at head" in ok(run("migrate")).stdout  # and the global tables

    # The scaffolded env.py refuses an online `alembic upgrade` and renders --sql.
    refused = _alembic("-c", "migrations/tenant/alembic.ini", "upgrade", "head", cwd=project)
    assert refused.returncode != 0
    assert "tenantry migrate" in refused.stderr
    sql = _alembic("-c", "migrations/tenant/alembic.ini", "upgrade", "head", "--sql", cwd=project)
    assert sql.returncode == 0, sql.stderr
    assert "ALTER TABLE notes ADD COLUMN color VARCHAR(20)" in sql.stdout
    assert "tenantry_tenant_version" in sql.stdout


def test_skip_failing_exits_non_zero_naming_the_tenant(project: Path) -> None:
    _setup(project)
    for tid in ("bad", "good"):
        ok(run("tenants", "create", tid, "--isolation", "database"))
    from tenantry import Tenantry, load_config, tenant_context
    from tests.models import Note

    with Tenantry(load_config()) as t, tenant_context("bad"), t.session() as s:
        s.add_all([Note(body="x"), Note(body="x")])
        s.commit()
    _revision(project, "u1", UNIQUE_BODY)

    result = run("migrate", "--skip-failing")
    assert result.exit_code == 1
    last = result.stderr.strip().splitlines()[-1]  # after the log line and the progress bar
    assert last.startswith("error: 1 target(s) failed to migrate: bad: IntegrityError")
    assert "good" in result.stdout
    assert "upgraded" in result.stdout

    stopped = run("migrate")  # without --skip-failing: bad fails again, nothing else is left
    assert stopped.exit_code == 1
    assert "bad" in stopped.stderr


def test_init_refuses_to_overwrite(project: Path) -> None:
    ok(run("migrate", "init", "migrations"))
    again = run("migrate", "init", "migrations")
    assert again.exit_code == 1
    assert "exists and is not empty" in again.stderr


def test_export_and_import_from_the_command_line(project: Path) -> None:
    (project / "tenantry.toml").write_text(
        "[tenantry]\n"
        'tenant_metadata = "tests.models:TenantBase"\n\n'
        "[stores.default]\n"
        f'url = "sqlite:///{project / "data" / "main.db"}"\n'
    )
    ok(run("tenants", "create", "acme", "--isolation", "shared"))
    from tenantry import Tenantry, load_config, tenant_context
    from tests.models import Note

    with Tenantry(load_config()) as t, tenant_context("acme"), t.session() as s:
        s.add_all([Note(body="one"), Note(body="two")])
        s.commit()
    out = ok(run("tenants", "export", "acme", "acme.tenant")).stdout
    assert "2 row(s)" in out
    imported = ok(
        run("tenants", "import", "acme.tenant", "--as", "acme2", "--isolation", "database")
    )
    assert "imported tenant 'acme2' (database on store 'default'): 2 row(s)" in imported.stdout
    with Tenantry(load_config()) as t, tenant_context("acme2"), t.session() as s:
        assert sorted(n.body for n in s.query(Note)) == ["one", "two"]

    again = run("tenants", "import", "acme.tenant", "--as", "acme2")
    assert again.exit_code == 1
    assert again.stderr.strip() == (
        "error: tenant 'acme2' already exists; nothing was imported (choose another id with --as)"
    )
    (project / "cut.tenant").write_bytes((project / "acme.tenant").read_bytes()[:100])
    cut = run("tenants", "import", "cut.tenant", "--as", "acme3")
    assert cut.exit_code == 1
    assert cut.stderr.startswith("error: cut.tenant is not a readable tenantry export")
    bad_id = run("tenants", "import", "acme.tenant", "--as", "Bad-Id")
    assert bad_id.exit_code == 1
    assert "invalid tenant id 'Bad-Id'" in bad_id.stderr
    listed = json.loads(ok(run("tenants", "list", "--json")).stdout)
    assert [t["id"] for t in listed] == ["acme", "acme2"]


def test_move_from_the_command_line(project: Path) -> None:
    (project / "tenantry.toml").write_text(
        "[tenantry]\n"
        'tenant_metadata = "tests.models:TenantBase"\n'
        "catalog_cache_ttl = 0.05\n\n"
        "[stores.default]\n"
        f'url = "sqlite:///{project / "data" / "main.db"}"\n'
    )
    ok(run("tenants", "create", "acme", "--isolation", "shared"))
    from tenantry import Tenantry, load_config, tenant_context
    from tests.models import Note

    with Tenantry(load_config()) as t, tenant_context("acme"), t.session() as s:
        s.add_all([Note(body="one"), Note(body="two")])
        s.commit()
    out = ok(run("tenants", "move", "acme", "--isolation", "database")).stdout
    assert "moved tenant 'acme' to database on store 'default': 2 row(s)" in out
    said = " ".join(out.split())  # however the console wrapped it
    assert "2 row(s) copied while served, then paused" in said
    assert "for 0 changed row(s) and 0 job(s)" in said
    shown = json.loads(ok(run("tenants", "show", "acme", "--json")).stdout)
    assert (shown["isolation"], shown["status"]) == ("database", "active")
    same = run("tenants", "move", "acme", "--isolation", "database")
    assert same.exit_code == 1
    assert same.stderr.strip() == "error: tenant 'acme' is already database on store 'default'"


_MODELS_V2 = "tests.integration.lifecycle.test_autogenerate:TENANT_V2"


def test_revision_autogenerate_then_migrate(project: Path) -> None:
    _setup(project)
    for tid, mode in (("acme", "shared"), ("globex", "database")):
        ok(run("tenants", "create", tid, "--isolation", mode))
    out = ok(
        run("--models", _MODELS_V2, "migrate", "revision", "--autogenerate", "-m", "add due date")
    ).stdout
    said = " ".join(out.split())
    assert "compared with tenant 'acme' (shared on store 'default')" in said
    assert "review it, then run `tenantry migrate`" in said
    (path,) = (project / "migrations" / "tenant" / "versions").glob("*_add_due_date.py")
    assert "op.add_column('notes', sa.Column('due_date', sa.Date()" in path.read_text()

    assert "2 upgraded" in ok(run("--models", _MODELS_V2, "migrate")).stdout
    from tenantry import Tenantry, load_config

    with Tenantry(load_config()) as t:
        for tid in ("acme", "globex"):
            engine = t.placement(tid).strategy.admin_engine(t.store(), tid)
            try:
                with engine.connect() as conn:
                    columns = {c["name"] for c in inspect(conn).get_columns("notes")}
            finally:
                engine.dispose()
            assert "due_date" in columns, tid

    same = ok(run("--models", _MODELS_V2, "migrate", "revision", "--autogenerate", "-m", "again"))
    assert "nothing was written" in same.stdout
    assert len(list((project / "migrations" / "tenant" / "versions").glob("*.py"))) == 1


def test_plain_alembic_autogenerate_uses_the_scaffolded_env(project: Path) -> None:
    _setup(project)
    ok(run("tenants", "create", "acme", "--isolation", "database"))
    config = (project / "tenantry.toml").read_text()  # the next release's models
    (project / "tenantry.toml").write_text(
        config.replace('"tests.models:TenantBase"', f'"{_MODELS_V2}"')
    )
    alembic = [sys.executable, "-m", "alembic", "-c", "migrations/tenant/alembic.ini"]
    made = subprocess.run(
        [*alembic, "-x", "reference=acme", "revision", "--autogenerate", "-m", "due"],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])},
    )
    assert made.returncode == 0, made.stderr
    (path,) = (project / "migrations" / "tenant" / "versions").glob("*_due.py")
    text = path.read_text()
    assert "op.add_column('notes', sa.Column('due_date'" in text
    assert "schema" not in text.split("def upgrade")[1]


def test_revision_says_what_to_configure(project: Path) -> None:
    (project / "tenantry.toml").write_text(
        f'[stores.default]\nurl = "sqlite:///{project / "data" / "main.db"}"\n'
    )
    no_models = run("migrate", "revision", "--autogenerate", "-m", "x")
    assert no_models.exit_code == 1
    assert no_models.stderr.strip().splitlines() == [
        "error: autogenerate compares your tenant models with the database: set [tenantry] "
        'tenant_metadata = "module:attr" in the configuration (or pass --models MODULE:ATTR)'
    ]
    no_history = run("--models", "tests.models:TenantBase", "migrate", "revision", "-m", "x")
    assert no_history.exit_code == 1
    assert no_history.stderr.startswith("error: no tenant history to write into: set [tenantry]")
    no_global = run("migrate", "revision", "--global", "--autogenerate", "-m", "x")
    assert "global_metadata" in no_global.stderr


def test_stamp_with_no_revision_refuses_and_writes_nothing(project: Path) -> None:
    _setup(project)
    ok(run("tenants", "create", "old", "--isolation", "database"))
    refused = run("migrate", "stamp")
    assert refused.exit_code == 1
    assert refused.stderr.strip().startswith("error: nothing to stamp: the")
    assert "has no revision yet" in refused.stderr
    _revision(project, "s1", "pass")
    status = json.loads(ok(run("migrate", "--status", "--json")).stdout)
    assert {r["target"]: r["revision"] for r in status if r["kind"] != "global"} == {"old": None}
    out = ok(run("migrate", "stamp")).stdout
    assert "stamped 1 target(s)" in out  # the tenant; the global history has nothing to record
    assert "the global history has no revision yet" in " ".join(out.split())


def test_init_prints_only_the_keys_for_an_existing_tenantry_table(project: Path) -> None:
    existing = (
        "# our settings\n[tenantry]\ncatalog_cache_ttl = 2.0  # seconds\n\n"
        f'[stores.default]\nurl = "sqlite:///{project / "main.db"}"\n'
    )
    (project / "tenantry.toml").write_text(existing)
    out = ok(run("migrate", "init", "migrations")).stdout
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("add under the existing"))
    keys = lines[start + 1 :]
    assert keys == [
        'tenant_migrations = "migrations/tenant"',
        'global_migrations = "migrations/global"',
    ]
    assert (project / "tenantry.toml").read_text() == existing  # not edited
    edited = existing.replace("[tenantry]\n", "[tenantry]\n" + "\n".join(keys) + "\n")
    parsed = tomllib.loads(edited)["tenantry"]
    assert parsed["tenant_migrations"] == "migrations/tenant"
    assert tomllib.loads(existing + "\n".join(keys) + "\n")  # appended at the end: also valid

    (project / "other.toml").write_text(f'[stores.default]\nurl = "sqlite:///{project}/x.db"\n')
    fresh = ok(run("--config", "other.toml", "migrate", "init", "more")).stdout
    assert "add to other.toml:\n[tenantry]\ntenant_migrations" in fresh


def test_downgrade_from_the_command_line(project: Path) -> None:
    _setup(project)
    for tid in ("a", "b"):
        ok(run("tenants", "create", tid, "--isolation", "database"))
    path = _revision(project, "c1", ADD_COLOR)
    path.write_text(
        path.read_text().replace(
            "def downgrade() -> None:\n    pass",
            "def downgrade() -> None:\n"
            '    op.drop_index("ix_notes_color", "notes")\n'
            '    op.drop_column("notes", "color")',
        )
    )
    ok(run("migrate"))
    down = run("migrate", "downgrade", "-1", "--json")
    assert down.exit_code == 0, down.output
    results = json.loads(down.stdout)["results"]
    assert {(r["target"], r["outcome"], r["before"], r["after"]) for r in results} == {
        ("a", "downgraded", "c1", None),
        ("b", "downgraded", "c1", None),
    }
    again = ok(run("migrate", "downgrade", "-1"))
    assert "2 already there" in again.stdout
    assert run("migrate", "downgrade", "-2").stderr.strip() == (
        "error: tenant migrations: -2 goes below base (the history is shorter than that)"
    )
    assert "2 upgraded" in ok(run("migrate")).stdout
    table = ok(run("migrate", "downgrade", "base", "--tenant", "a")).stdout
    assert "downgraded" in table
    assert "1 downgraded, 0 already there" in table


def test_the_report_never_cuts_revision_ids_and_summarises_many_targets(project: Path) -> None:
    _setup(project)
    for i in range(22):
        ok(run("tenants", "create", f"t{i:02d}", "--isolation", "database"))
    long_id = "20261207_add_the_due_date_to_notes"
    _revision(project, long_id, "pass")
    many = _narrow("migrate")
    lines = many.stdout.splitlines()
    assert lines[0] == "22 target(s) run:"
    assert ["22", "upgraded", "(none)", "->", long_id] in [line.split() for line in lines]
    assert lines[-1] == "22 upgraded, 1 already at head"

    newer = "20261207_and_a_second_change_to_notes"
    _revision(project, newer, "pass")
    few = _narrow("migrate", "--tenant", "t00", "--tenant", "t01")
    assert "…" not in few.stdout
    lines = few.stdout.splitlines()
    assert max(len(line) for line in lines[:-3]) <= 80  # the table fits; the ids are below it
    assert ["2", "upgraded", long_id, "->", newer] in [line.split() for line in lines]
    assert lines[-1] == "2 upgraded, 0 already at head"

    rest = json.loads(ok(run("migrate", "--json")).stdout)  # --json: a row per target, as before
    assert rest["untouched"] == 3  # t00, t01 and the global tables
    assert len(rest["results"]) == 20
    assert {r["after"] for r in rest["results"]} == {newer}


def _narrow(*args: str) -> Result:
    """The command on an 80-column terminal."""
    return ok(CliRunner().invoke(cli, list(args), env={"COLUMNS": "80"}, catch_exceptions=False))

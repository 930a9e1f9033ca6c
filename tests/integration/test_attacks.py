"""SQL injected into one tenant's request cannot reach another tenant's rows.

Each test is one attack, run as raw SQL inside the attacker's (``acme``)
session, against every deployment of the matrix: isolation mode (shared,
schema, database) x login set-up ("single": one superuser URL, the quickstart;
"split": ``admin_url`` superuser, ``url`` a plain non-owner login) x path
("direct": the default pool; "pool1": one pooled connection, so both tenants'
requests run on the same server backend; "pgbouncer": transaction pooling).

An attack passes when it is refused (a database error, or tenantry's
``IsolationError``) or when it reads only the attacker's rows; and in every
case when the admin snapshot of everything outside the attacker's own rows is
unchanged afterwards (:meth:`Deployment.guard`). Attacks that poison a
connection are followed by the victim's request on the same backend, which
must work and see only its own rows.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from tenantry import StoreConfig, Tenantry, TenantryConfig, tenant_context
from tenantry.tenancy.session import TenantSession
from tests.conftest import TenantryFactory
from tests.integration.attacks_support import (
    ATTACKER,
    ISOLATION_ERROR,
    LOGINS,
    MODES,
    PATHS,
    READ,
    REFUSED,
    TABLE,
    VICTIM,
    Deployment,
    backend_pid,
    build,
    create_login,
    dbapi_error_code,
    drop_databases,
    drop_login,
    leaked,
    marker,
    private,
    rows_of,
    run_steps,
    unique,
)
from tests.models import Note
from tests.pgserver import connect

pytestmark = pytest.mark.postgres

MATRIX = [(m, lg, p) for m in MODES for lg in LOGINS for p in PATHS]


def _cells(paths: tuple[str, ...]) -> pytest.MarkDecorator:
    cells = [c for c in MATRIX if c[2] in paths]
    return pytest.mark.parametrize(
        "deployment", cells, ids=["-".join(c) for c in cells], indirect=True, scope="module"
    )


#: Attacks that leave state on a server connection for the next request: every path.
EVERY_PATH = _cells(PATHS)
#: Attacks inside one transaction: the pool's size does not matter, the pooler might.
ONE_REQUEST = _cells(("direct", "pgbouncer"))


@pytest.fixture(scope="module")
def deployment(
    request: pytest.FixtureRequest, pg_server: str, pg_template: str
) -> Iterator[Deployment]:
    """One matrix cell, built once per module; dropped (databases, login) at the end."""
    mode, login, path = request.param
    bouncer = request.getfixturevalue("pgbouncer_server") if path == "pgbouncer" else None
    store_db = f"tt_atk_{uuid.uuid4().hex[:8]}"
    with connect(pg_server) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(store_db), sql.Identifier(pg_template)
            )
        )
    app_login = create_login(pg_server) if login == "split" else None
    dep: Deployment | None = None
    try:
        dep = build(mode, login, path, pg_server, store_db, app_login, bouncer)
        yield dep
    finally:
        if dep is not None:
            dep.close()
            dep.close_admin()
        drop_databases(pg_server, store_db)
        if app_login is not None:
            drop_login(pg_server, app_login)


@pytest.fixture
def dep(deployment: Deployment) -> Deployment:
    """The deployment with its seeded rows back and no pooled connection left from before."""
    deployment.reset()
    deployment.fresh_connections()
    return deployment


def set_tenant(tenant_id: str) -> str:
    return f"SELECT set_config('tenantry.tenant_id', '{tenant_id}', true)"


def attack(dep: Deployment, steps: list[str], *, read: bool = True) -> list[tuple[object, ...]]:
    """*steps* (then :data:`READ`) in the attacker's request; the rows it got ([] if refused)."""
    with dep.guard(ATTACKER), dep.request(ATTACKER) as s:
        dep.control(s, ATTACKER)
        rows = run_steps(s, steps + ([READ] if read else []))
    got = rows or []
    assert leaked(got, ATTACKER) == [], f"{dep.id}: the attacker read {leaked(got, ATTACKER)}"
    return got


def _execute_and_commit(session: TenantSession, step: str) -> None:
    session.execute(text(step))
    session.commit()


def assert_refused(dep: Deployment, steps: list[str]) -> None:
    """Every statement of *steps* must fail (each in a fresh transaction), changing nothing."""
    with dep.guard(ATTACKER), dep.request(ATTACKER) as s:
        dep.control(s, ATTACKER)
        s.commit()
        for step in steps:
            try:
                _execute_and_commit(s, step)
            except REFUSED:
                s.rollback()
                continue
            pytest.fail(f"{dep.id}: not refused: {step}")


def victim_request_is_clean(dep: Deployment, pid: int | None = None) -> None:
    """The victim's next ordinary request works (read and write) and sees only its rows."""
    with dep.guard(VICTIM), dep.request(VICTIM) as s:
        if pid is not None and dep.one_backend:
            assert backend_pid(s) == pid, "the victim's request did not reuse the backend"
        assert s.scalars(select(Note.body).order_by(Note.body)).all() == [
            private(VICTIM, 1),
            private(VICTIM, 2),
        ]
        dep.control(s, VICTIM)
        s.add(Note(body=f"{VICTIM}-new"))
        s.commit()
    assert f"{VICTIM}-new" in dep.rows_of(VICTIM)


# -- 1. the tenant setting ----------------------------------------------------------


@ONE_REQUEST
def test_set_config_tenant_then_read(dep: Deployment) -> None:
    attack(dep, [set_tenant(VICTIM)])


@ONE_REQUEST
@pytest.mark.parametrize(
    "write",
    [
        "UPDATE notes SET body = 'pwned'",
        "DELETE FROM notes",
        "INSERT INTO notes (tenant_id, body) VALUES ('globex', 'planted')",
        "INSERT INTO notes (body) VALUES ('planted')",
    ],
    ids=["update", "delete", "insert-victim", "insert-default"],
)
def test_set_config_tenant_then_write(dep: Deployment, write: str) -> None:
    attack(dep, [set_tenant(VICTIM), write])


@ONE_REQUEST
def test_set_config_with_the_attackers_own_proof(dep: Deployment) -> None:
    """The attacker copies the proof of its own binding and claims the victim's id."""
    with dep.guard(ATTACKER), dep.request(ATTACKER) as s:
        dep.control(s, ATTACKER)
        proof = s.execute(text("SELECT current_setting('tenantry.proof', true)")).scalar()
        rows = run_steps(
            s,
            [
                set_tenant(VICTIM),
                f"SELECT set_config('tenantry.proof', '{proof or ''}', true)",
                "UPDATE notes SET body = 'pwned'",
                READ,
            ],
        )
    assert leaked(rows or [], ATTACKER) == []


@ONE_REQUEST
@pytest.mark.parametrize("scope", ["SET", "SET SESSION", "SET LOCAL"])
def test_set_tenant_statement(dep: Deployment, scope: str) -> None:
    attack(dep, [f"{scope} tenantry.tenant_id = '{VICTIM}'", "UPDATE notes SET body = 'pwned'"])


@EVERY_PATH
def test_session_level_tenant_setting_does_not_outlive_the_request(dep: Deployment) -> None:
    """A session-level ``SET tenantry.tenant_id`` is gone in the next request on the backend."""
    with dep.guard(ATTACKER), dep.request(ATTACKER) as s:
        pid = backend_pid(s)
        run_steps(s, [f"SET tenantry.tenant_id = '{VICTIM}'"])
    with dep.guard(ATTACKER), dep.request(ATTACKER) as s:
        dep.control(s, ATTACKER)
    victim_request_is_clean(dep, pid)


# -- 2. roles ------------------------------------------------------------------------


@ONE_REQUEST
@pytest.mark.parametrize(
    "step",
    [
        "SET ROLE postgres",
        "SET LOCAL ROLE postgres",
        "SET ROLE {admin}",
        "SET ROLE tenantry_rls",
        "SET ROLE {app}",
        "RESET ROLE",
        "SET ROLE NONE",
        "SELECT set_config('role', 'none', true)",
        "SET SESSION AUTHORIZATION postgres",
        "SET SESSION AUTHORIZATION DEFAULT",
        "RESET ALL",
    ],
)
def test_role_switch_then_read_and_write(dep: Deployment, step: str) -> None:
    statement = step.format(admin=dep.admin_login, app=dep.app_login)
    attack(dep, [statement, f"UPDATE notes SET body = 'pwned' WHERE tenant_id = '{VICTIM}'"])


@ONE_REQUEST
def test_sessions_never_run_as_a_privileged_login(dep: Deployment) -> None:
    """Neither the login nor the current role may be superuser, BYPASSRLS or table owner."""
    check = (
        "SELECT r.rolname, r.rolsuper, r.rolbypassrls, "
        " EXISTS (SELECT 1 FROM pg_class c WHERE c.relname = 'notes' "
        "  AND pg_has_role(r.oid, c.relowner, 'USAGE'))"
        " FROM pg_roles r WHERE r.rolname IN (session_user, current_user)"
    )
    with dep.request(ATTACKER) as s:
        rows = rows_of(s.execute(text(check)))
    with dep.tenantry.global_session() as g:
        rows += rows_of(g.execute(text(check)))
    assert [r for r in rows if r[1] or r[2] or r[3]] == [], rows


# -- 3. and 4. schema-qualified names and search_path -------------------------------


@ONE_REQUEST
@pytest.mark.parametrize(
    "step",
    [
        f"SELECT tenant_id, body FROM t_{VICTIM}.notes",
        "SELECT tenant_id, body FROM public.notes",
        f"INSERT INTO t_{VICTIM}.notes (tenant_id, body) VALUES ('{VICTIM}', 'planted')",
        f"INSERT INTO t_{VICTIM}.notes (body) VALUES ('planted')",
        f"UPDATE t_{VICTIM}.notes SET body = 'pwned'",
        f"DELETE FROM t_{VICTIM}.notes",
        f"INSERT INTO public.notes (tenant_id, body) VALUES ('{VICTIM}', 'planted')",
        "UPDATE public.notes SET body = 'pwned'",
        f"INSERT INTO t_{ATTACKER}.notes (tenant_id, body) VALUES ('{VICTIM}', 'planted')",
    ],
)
def test_schema_qualified_names(dep: Deployment, step: str) -> None:
    attack(dep, [step])


@ONE_REQUEST
@pytest.mark.parametrize(
    "step",
    [
        f"SET search_path = t_{VICTIM}",
        f"SET LOCAL search_path = t_{VICTIM}, public",
        f"SELECT set_config('search_path', 't_{VICTIM}', true)",
        f"SELECT set_config('search_path', 't_{VICTIM}', false)",
    ],
)
def test_search_path_then_unqualified(dep: Deployment, step: str) -> None:
    attack(dep, [step, "UPDATE notes SET body = 'pwned'"])


@EVERY_PATH
def test_session_search_path_does_not_reach_the_victims_request(dep: Deployment) -> None:
    """``SET search_path`` to the victim's schema, committed: the victim still writes its own."""
    with dep.guard(ATTACKER), dep.request(ATTACKER) as s:
        pid = backend_pid(s)
        run_steps(s, [f"SET search_path = t_{ATTACKER}, public"])
    victim_request_is_clean(dep, pid)


# -- 5. temporary tables --------------------------------------------------------------


@EVERY_PATH
def test_temp_table_cannot_shadow_the_victims_table(dep: Deployment) -> None:
    """A temp ``notes`` left on the backend must not catch the victim's raw INSERT."""
    with dep.guard(ATTACKER), dep.request(ATTACKER) as s:
        pid = backend_pid(s)
        run_steps(s, [f"CREATE TEMP TABLE {TABLE} (id int, tenant_id text, body text)"])
    with dep.guard(VICTIM), dep.request(VICTIM) as s:
        if dep.one_backend:
            assert backend_pid(s) == pid
        s.execute(text(f"INSERT INTO notes (tenant_id, body) VALUES ('{VICTIM}', 'victim-raw')"))
        rows = s.execute(text(READ)).all()
        assert leaked(rows, VICTIM) == []
        s.commit()
    # The victim's row went to the victim's table...
    assert "victim-raw" in dep.rows_of(VICTIM)
    # ...and the attacker, back on the backend, finds nothing of it anywhere.
    with dep.request(ATTACKER) as s:
        got = run_steps(s, [READ, f"SELECT * FROM pg_temp.{TABLE}"]) or []
    assert [r for r in got if "victim-raw" in repr(r) or marker(VICTIM) in repr(r)] == []


@EVERY_PATH
def test_innocent_temp_table_is_not_visible_to_the_next_tenant(dep: Deployment) -> None:
    """A temp table (no ON COMMIT DROP) made by the attacker's code holds the attacker's rows."""
    name = unique("scratch")
    with dep.request(ATTACKER) as s:
        pid = backend_pid(s)
        run_steps(s, [f"CREATE TEMP TABLE {name} AS SELECT tenant_id, body FROM notes"])
    with dep.guard(VICTIM), dep.request(VICTIM) as s:
        if dep.one_backend:
            assert backend_pid(s) == pid
        got = run_steps(s, [f"SELECT * FROM {name}"]) or []
    assert leaked(got, VICTIM) == []
    with dep.request(VICTIM) as s:
        got = run_steps(s, [f"SELECT * FROM pg_temp.{name}"]) or []
    assert leaked(got, VICTIM) == []


# -- 6. DISCARD / RESET -----------------------------------------------------------------


@ONE_REQUEST
@pytest.mark.parametrize("step", ["DISCARD ALL", "DISCARD TEMP", "RESET ALL", "DISCARD PLANS"])
def test_discard_and_reset_then_read(dep: Deployment, step: str) -> None:
    attack(dep, [step, "UPDATE notes SET body = 'pwned'"])


@ONE_REQUEST
@pytest.mark.parametrize("step", ["DISCARD ALL", "RESET ALL"])
def test_discard_and_reset_through_the_driver(dep: Deployment, step: str) -> None:
    with dep.guard(ATTACKER), dep.request(ATTACKER) as s:
        dep.control(s, ATTACKER)
        try:
            conn = s.connection()
            conn.exec_driver_sql(step)
            conn.exec_driver_sql("UPDATE notes SET body = 'pwned'")
            rows = conn.exec_driver_sql(READ).all()
            s.commit()
        except REFUSED:
            s.rollback()
            rows = []
    assert leaked(rows, ATTACKER) == []


# -- 7. leaving the tenant transaction ------------------------------------------------


@ONE_REQUEST
def test_autocommit_connection_is_refused_or_blind(dep: Deployment) -> None:
    with dep.guard(ATTACKER), dep.request(ATTACKER) as s:
        try:
            conn = s.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            conn.execute(text(f"UPDATE notes SET body = 'pwned' WHERE tenant_id = '{VICTIM}'"))
            rows = conn.execute(text(READ)).all()
        except REFUSED as exc:
            if ISOLATION_ERROR is not None and not isinstance(exc, ISOLATION_ERROR):
                pytest.fail(f"refused, but not with IsolationError: {exc!r}")
            rows = []
    assert leaked(rows, ATTACKER) == []


@ONE_REQUEST
def test_raw_commit_on_the_session_connection(dep: Deployment) -> None:
    """``session.connection().commit()``: the next transaction on it is still the attacker's."""
    with dep.guard(ATTACKER), dep.request(ATTACKER) as s:
        dep.control(s, ATTACKER)
        conn = s.connection()
        rows: list[object] = []
        try:
            conn.commit()
            conn.execute(text(f"UPDATE notes SET body = 'pwned' WHERE tenant_id = '{VICTIM}'"))
            rows = list(conn.execute(text(READ)).all())
            conn.commit()
        except REFUSED:
            conn.rollback()
    assert leaked(rows, ATTACKER) == []


@ONE_REQUEST
@pytest.mark.parametrize("end", ["COMMIT", "ROLLBACK", "END", "COMMIT AND CHAIN"])
def test_sql_commit_then_read(dep: Deployment, end: str) -> None:
    attack(dep, [end, f"UPDATE notes SET body = 'pwned' WHERE tenant_id = '{VICTIM}'"])


@ONE_REQUEST
def test_sql_commit_through_the_driver_then_read(dep: Deployment) -> None:
    with dep.guard(ATTACKER), dep.request(ATTACKER) as s:
        dep.control(s, ATTACKER)
        conn = s.connection()
        rows: list[object] = []
        try:
            conn.exec_driver_sql("COMMIT")
            conn.exec_driver_sql(f"UPDATE notes SET body = 'pwned' WHERE tenant_id = '{VICTIM}'")
            rows = list(conn.exec_driver_sql(READ).all())
            conn.exec_driver_sql("COMMIT")
        except REFUSED:
            s.rollback()
    assert leaked(rows, ATTACKER) == []


# -- 8. savepoints --------------------------------------------------------------------


@ONE_REQUEST
@pytest.mark.parametrize(
    "steps",
    [
        ["SAVEPOINT s", set_tenant(VICTIM), READ, "ROLLBACK TO SAVEPOINT s"],
        ["SAVEPOINT s", set_tenant(VICTIM), "RELEASE SAVEPOINT s"],
        ["SAVEPOINT s", "RESET ROLE", READ, "RELEASE SAVEPOINT s"],
        ["SAVEPOINT s", "SELECT 1/0"],
    ],
    ids=["rollback-to", "release", "reset-role", "error"],
)
def test_savepoints(dep: Deployment, steps: list[str]) -> None:
    attack(dep, [*steps, "UPDATE notes SET body = 'pwned'"])


@ONE_REQUEST
def test_nested_transaction_with_spoofed_setting(dep: Deployment) -> None:
    with dep.guard(ATTACKER), dep.request(ATTACKER) as s:
        dep.control(s, ATTACKER)
        rows: list[object] = []
        try:
            with s.begin_nested():
                s.execute(text(set_tenant(VICTIM)))
                rows += s.execute(text(READ)).all()
            rows += s.execute(text(READ)).all()
            s.commit()
        except REFUSED:
            s.rollback()
    assert leaked(rows, ATTACKER) == []


# -- 9. prepared statements -------------------------------------------------------------


@EVERY_PATH
def test_prepared_statement_runs_as_whoever_executes_it(dep: Deployment) -> None:
    """Prepared by the attacker, executed in the victim's request: never the attacker's rows."""
    name = unique("p")
    with dep.request(ATTACKER) as s:
        pid = backend_pid(s)
        run_steps(s, [f"PREPARE {name} AS SELECT tenant_id, body FROM notes"])
    with dep.guard(VICTIM), dep.request(VICTIM) as s:
        if dep.one_backend:
            assert backend_pid(s) == pid
        got = run_steps(s, [f"EXECUTE {name}"]) or []
    assert leaked(got, VICTIM) == []


@EVERY_PATH
def test_prepared_write_left_for_the_victim(dep: Deployment) -> None:
    """A prepared UPDATE left on the backend, run by the victim, touches only the victim."""
    name = unique("p")
    with dep.request(ATTACKER) as s:
        run_steps(s, [f"PREPARE {name} AS INSERT INTO notes (tenant_id, body) VALUES ($1, $2)"])
    with dep.guard(VICTIM), dep.request(VICTIM) as s:
        run_steps(s, [f"EXECUTE {name}('{ATTACKER}', 'planted')"])


@ONE_REQUEST
def test_prepare_after_spoofed_setting(dep: Deployment) -> None:
    name = unique("q")
    attack(
        dep,
        [
            set_tenant(VICTIM),
            f"PREPARE {name} AS SELECT tenant_id, body FROM notes",
            f"EXECUTE {name}",
        ],
    )


# -- 10. COPY -------------------------------------------------------------------------------


def _copy_out(dep: Deployment, before: list[str], statement: str) -> bytes:
    with dep.guard(ATTACKER), dep.request(ATTACKER) as s:
        dep.control(s, ATTACKER)
        try:
            for step in before:
                s.execute(text(step))
            driver = s.connection().connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            data = b""
            with driver.cursor() as cur, cur.copy(statement) as copy:
                for chunk in copy:
                    data += bytes(chunk)
            s.commit()
        except REFUSED:
            s.rollback()
            return b""
    return data


@ONE_REQUEST
@pytest.mark.parametrize(
    "statement",
    [
        "COPY notes TO STDOUT",
        "COPY (SELECT tenant_id, body FROM notes) TO STDOUT",
        f"COPY t_{VICTIM}.notes TO STDOUT",
        "COPY public.notes TO STDOUT",
    ],
)
@pytest.mark.parametrize("spoof", [False, True], ids=["plain", "spoofed"])
def test_copy_to_stdout(dep: Deployment, statement: str, spoof: bool) -> None:
    data = _copy_out(dep, [set_tenant(VICTIM)] if spoof else [], statement)
    assert marker(VICTIM).encode() not in data


@ONE_REQUEST
@pytest.mark.parametrize("table", ["notes", f"t_{VICTIM}.notes", "public.notes"])
def test_copy_from_stdin(dep: Deployment, table: str) -> None:
    with dep.guard(ATTACKER), dep.request(ATTACKER) as s:
        dep.control(s, ATTACKER)
        try:
            s.execute(text(set_tenant(VICTIM)))
            driver = s.connection().connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            with (
                driver.cursor() as cur,
                cur.copy(f"COPY {table} (tenant_id, body) FROM STDIN") as cp,
            ):
                cp.write_row((VICTIM, "planted"))
            s.commit()
        except REFUSED:
            s.rollback()


@ONE_REQUEST
@pytest.mark.parametrize(
    "statement",
    [
        "COPY (SELECT 1) TO PROGRAM 'true'",
        "COPY notes TO '{file}'",
        "COPY notes FROM '/etc/hostname'",
    ],
)
@pytest.mark.parametrize("first", ["", "RESET ROLE; "], ids=["as-is", "reset-role"])
def test_copy_with_server_files_is_refused(dep: Deployment, statement: str, first: str) -> None:
    """Server files and programs are for superusers: a tenant request never is one."""
    path = Path(tempfile.gettempdir()) / f"{unique('tenantry_attack')}.txt"
    try:
        assert_refused(dep, [first + statement.format(file=path)])
    finally:
        path.unlink(missing_ok=True)  # the server is local in the suite; written if it got in


# -- 11. functions and the binding -----------------------------------------------------------


@ONE_REQUEST
@pytest.mark.parametrize(
    "schema", ["public", f"t_{ATTACKER}", "pg_temp", "tenantry"], ids=lambda s: s
)
def test_create_function_is_refused(dep: Deployment, schema: str) -> None:
    name = unique("f")
    assert_refused(
        dep,
        [
            f"CREATE FUNCTION {schema}.{name}() RETURNS text LANGUAGE sql AS $$SELECT 'x'$$",
            "CREATE OR REPLACE FUNCTION tenantry.current_tenant() RETURNS text "
            f"LANGUAGE sql AS $$SELECT '{VICTIM}'::text$$",
        ],
    )


@ONE_REQUEST
@pytest.mark.parametrize("token", [b"\x00", os.urandom(32), b""], ids=["zero", "random", "empty"])
def test_enter_with_a_guessed_token_is_refused(dep: Deployment, token: bytes) -> None:
    with dep.guard(ATTACKER), dep.request(ATTACKER) as s:
        dep.control(s, ATTACKER)
        with pytest.raises(REFUSED) as caught:
            s.execute(text("SELECT tenantry.enter(:t, :k)"), {"t": VICTIM, "k": token})
        assert dbapi_error_code(caught.value) == "42501", caught.value
        assert "invalid tenant binding" in str(caught.value)
        s.rollback()


@ONE_REQUEST
def test_current_tenant_ignores_a_spoofed_setting(dep: Deployment) -> None:
    with dep.request(ATTACKER) as s:
        assert s.execute(text("SELECT tenantry.current_tenant()")).scalar() == ATTACKER
        s.execute(text(set_tenant(VICTIM)))
        assert s.execute(text("SELECT tenantry.current_tenant()")).scalar() is None
        assert s.execute(text(READ)).all() == []


@ONE_REQUEST
@pytest.mark.parametrize("where", ["tenant", "global"])
def test_binding_key_is_unreadable(dep: Deployment, where: str) -> None:
    with dep.guard(ATTACKER), tenant_context(ATTACKER):
        s = dep.tenantry.session() if where == "tenant" else dep.tenantry.global_session()
        with s, pytest.raises(REFUSED) as caught:
            s.execute(text("SELECT * FROM tenantry.binding_key")).all()
        assert dbapi_error_code(caught.value) == "42501", caught.value


# -- 12. session state carried to the next request -----------------------------------------


@EVERY_PATH
@pytest.mark.parametrize(
    "poison",
    [
        "SET default_transaction_read_only = on",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "SET statement_timeout = 1",
        "SET lock_timeout = 1",
        "SET row_security = off",
        "SET SESSION ROLE NONE",
        f"SET tenantry.tenant_id = '{ATTACKER}'",
        "SET search_path = pg_temp, public",
    ],
)
def test_session_settings_do_not_carry_over(dep: Deployment, poison: str) -> None:
    with dep.guard(ATTACKER), dep.request(ATTACKER) as s:
        pid = backend_pid(s)
        run_steps(s, [poison])
    # statement_timeout = 1 can fail the pool's pre-ping, which replaces the backend.
    victim_request_is_clean(dep, None if "timeout" in poison else pid)
    with dep.guard(ATTACKER), dep.request(ATTACKER) as s:
        dep.control(s, ATTACKER)
        s.add(Note(body=f"{ATTACKER}-new"))
        s.commit()


# -- 13. the wall itself ---------------------------------------------------------------------


@ONE_REQUEST
def test_ddl_on_the_wall_is_refused(dep: Deployment) -> None:
    before = dep.wall_state()
    drops = [f"DROP POLICY IF EXISTS {name} ON notes" for name in dep.policy_names()]
    assert_refused(
        dep,
        [
            "ALTER TABLE notes DISABLE ROW LEVEL SECURITY",
            "ALTER TABLE notes NO FORCE ROW LEVEL SECURITY",
            *drops,
            "CREATE POLICY open_all ON notes USING (true) WITH CHECK (true)",
            "ALTER TABLE notes ALTER COLUMN tenant_id SET DEFAULT 'globex'",
            "TRUNCATE notes",
            "DROP TABLE notes",
            "ALTER TABLE notes RENAME TO notes_old",
            "ALTER TABLE notes OWNER TO CURRENT_USER",
        ],
    )
    assert dep.wall_state() == before
    # RLS enabled and forced, with a policy, on every tenant table.
    assert before
    assert all(r[2] and r[3] and r[4] for r in before), before


# -- 14. async sessions ------------------------------------------------------------------------


@ONE_REQUEST
@pytest.mark.parametrize(
    "steps",
    [
        [set_tenant(VICTIM)],
        ["RESET ROLE"],
        ["SET SESSION AUTHORIZATION DEFAULT"],
        ["COMMIT"],
        [f"SET search_path = t_{VICTIM}"],
    ],
    ids=["set_config", "reset-role", "session-authorization", "commit", "search_path"],
)
async def test_async_attacks(dep: Deployment, steps: list[str]) -> None:
    t = Tenantry(dep.config)  # its own pools, on this test's event loop
    rows: list[object] = []
    try:
        with dep.guard(ATTACKER), tenant_context(ATTACKER):
            async with t.async_session() as s:
                assert rows_of(await s.execute(text(READ))) == [
                    (ATTACKER, private(ATTACKER, 1)),
                    (ATTACKER, private(ATTACKER, 2)),
                ]
                try:
                    for step in [*steps, "UPDATE notes SET body = 'pwned'", READ]:
                        rows += rows_of(await s.execute(text(step)))
                    await s.commit()
                except REFUSED:
                    await s.rollback()
    finally:
        await t.aclose()
    assert leaked(rows, ATTACKER) == []


@ONE_REQUEST
async def test_async_autocommit_is_refused_or_blind(dep: Deployment) -> None:
    t = Tenantry(dep.config)  # its own pools, on this test's event loop
    rows: list[object] = []
    try:
        with dep.guard(ATTACKER), tenant_context(ATTACKER):
            async with t.async_session() as s:
                try:
                    conn = await s.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
                    await conn.execute(text("UPDATE notes SET body = 'pwned'"))
                    rows += (await conn.execute(text(READ))).all()
                except REFUSED as exc:
                    if ISOLATION_ERROR is not None and not isinstance(exc, ISOLATION_ERROR):
                        pytest.fail(f"refused, but not with IsolationError: {exc!r}")
    finally:
        await t.aclose()
    assert leaked(rows, ATTACKER) == []


# -- global sessions ---------------------------------------------------------------------------


@ONE_REQUEST
@pytest.mark.parametrize(
    "steps",
    [
        [],
        [set_tenant(VICTIM)],
        ["RESET ROLE"],
        [f"SELECT tenant_id, body FROM t_{VICTIM}.notes"],
    ],
    ids=["plain", "set_config", "reset-role", "qualified"],
)
def test_global_session_sees_no_tenant_rows(dep: Deployment, steps: list[str]) -> None:
    with dep.guard(None), dep.tenantry.global_session() as g:
        rows: list[object] = []
        try:
            for step in [*steps, "UPDATE notes SET body = 'pwned'", READ]:
                rows += rows_of(g.execute(text(step)))
            g.commit()
        except REFUSED:
            g.rollback()
    assert [r for r in rows if "private" in repr(r)] == []


# -- privileged session logins are refused -------------------------------------------------


def _first_request(t: Tenantry) -> None:
    """Provision the attacker if needed, then one raw read in its session."""
    if t.catalog.find(ATTACKER) is None:
        t.create_tenant(ATTACKER)
    with tenant_context(ATTACKER), t.session() as s:
        s.execute(text("SELECT count(*) FROM notes")).all()


@pytest.mark.parametrize("kind", ["superuser", "bypassrls", "owner"])
def test_a_privileged_session_login_is_refused(
    make_tenantry: TenantryFactory, pg_database: str, pg_server: str, kind: str
) -> None:
    """With ``admin_url`` set, a ``url`` login that could bypass the wall is refused."""
    direct = make_url(pg_database)
    role = None if kind == "superuser" else create_login(pg_server)
    try:
        if role is not None:
            with connect(pg_server, direct.database) as conn:
                ident = sql.Identifier(role)
                if kind == "bypassrls":
                    conn.execute(sql.SQL("ALTER ROLE {} BYPASSRLS").format(ident))
                else:
                    conn.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(ident))
        login = role or str(direct.username)
        url = direct.set(username=login).render_as_string(hide_password=False)
        config = TenantryConfig(
            stores={"default": StoreConfig("default", url, admin_url=pg_database, rls_role="")}
        )
        assert ISOLATION_ERROR is not None, "tenantry.errors.IsolationError is missing"
        if kind == "owner":
            # The login comes to own a tenant table after provisioning; a new process sees it.
            make_tenantry("postgresql", config).create_tenant(ATTACKER)
            with connect(pg_server, direct.database) as conn:
                conn.execute(
                    sql.SQL("ALTER TABLE public.notes OWNER TO {}").format(sql.Identifier(login))
                )
        t = make_tenantry("postgresql", config)
        with pytest.raises(ISOLATION_ERROR):
            _first_request(t)
    finally:
        if role is not None:
            with connect(pg_server, direct.database) as conn:
                conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
            drop_login(pg_server, role)

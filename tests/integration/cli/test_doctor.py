"""``tenantry doctor`` on the command line: one line per finding, the exit status, --json,
--strict, the summary and the progress bar.

The checks themselves are tested in ``tests/integration/test_doctor.py``; here
the project's configuration declares ``tests.models``, whose ``reviews`` table
has a foreign key to ``products`` without ``tenant_id``: a real finding once a
shared tenant exists on PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from sqlalchemy.engine import make_url

from tenantry.cli.main import COMMANDS
from tenantry.tenancy.config import load_config
from tests.integration.cli.conftest import Project, data, ok


def test_a_clean_deployment_says_so_and_exits_0(sqlite_project: Project) -> None:
    sqlite_project.create("acme")
    sqlite_project.create("initech", isolation="database")
    result = ok(sqlite_project.run("doctor"))
    assert result.stdout == "no findings: 1 stores, 2 tenants checked\n"
    assert data(sqlite_project.run("doctor", "--json")) == {
        "ok": True,
        "stores": 1,
        "tenants": 2,
        "findings": [],
    }


@pytest.mark.postgres
def test_findings_one_line_each_and_exit_1(make_project: Callable[[str], Project]) -> None:
    p = make_project("postgresql")
    ok(p.run("doctor"))  # no tenant, no shared tables yet
    p.create("acme")
    result = p.run("doctor")
    assert result.exit_code == 1, result.output
    [line] = result.stdout.splitlines()
    assert line.startswith("table public.reviews in database ")
    assert ": foreign key fk_reviews_product_id_products (product_id) -> products (id) " in line
    assert " — fix: ALTER TABLE public.products ADD UNIQUE (tenant_id, id); " in line
    assert result.stderr == "1 findings (1 errors, 0 warnings): 1 stores, 1 tenants checked\n"

    as_json = json.loads(p.run("doctor", "--json").stdout)
    assert as_json["ok"] is False
    [finding] = as_json["findings"]
    assert (finding["check"], finding["severity"], finding["store"]) == ("keys", "error", "default")


@pytest.mark.postgres
def test_a_literal_password_warns_and_fails_only_when_strict(
    make_project: Callable[[str], Project],
) -> None:
    p = make_project("postgresql")
    config = p.path / "tenantry.toml"
    url = load_config(config).stores["default"].url
    with_password = make_url(url).set(password="hunter2").render_as_string(hide_password=False)
    config.write_text(config.read_text().replace(url, with_password))

    result = ok(p.run("doctor"))
    [line] = result.stdout.splitlines()
    assert line.startswith("tenantry.toml stores.default.url: warning: the URL holds a literal ")
    assert "— fix: write the password as ${VAR}" in line
    assert "hunter2" not in result.output
    assert result.stderr == "1 findings (0 errors, 1 warnings): 1 stores, 0 tenants checked\n"

    strict = p.run("doctor", "--strict")
    assert strict.exit_code == 1
    assert "hunter2" not in strict.output
    assert json.loads(p.run("doctor", "--json", "--strict").stdout)["ok"] is False


def test_a_progress_bar_over_many_tenants(sqlite_project: Project) -> None:
    sqlite_project.create(*[f"t{i:02d}" for i in range(21)])
    result = ok(sqlite_project.run("doctor", "--progress"))
    assert "check tenants" in result.stderr
    assert "21/21" in result.stderr
    assert result.stdout == "no findings: 1 stores, 21 tenants checked\n"


def test_no_progress_bar_over_few_tenants(sqlite_project: Project) -> None:
    sqlite_project.create("acme")
    result = ok(sqlite_project.run("doctor", "--progress"))
    assert result.stderr == ""


def test_listed_with_its_help(sqlite_project: Project) -> None:
    listed = ok(sqlite_project.run("--help")).stdout
    assert "doctor" in listed
    assert COMMANDS["doctor"].help.split(";")[0] in listed
    assert "--strict" in ok(sqlite_project.run("doctor", "--help")).stdout

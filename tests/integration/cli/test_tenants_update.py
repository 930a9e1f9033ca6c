"""``tenantry tenants update``: name, settings and queue limits, checked before any write."""

from __future__ import annotations

from tenantry.queue.control import QueueSettings
from tests.integration.cli.conftest import Project, bad_inputs, data, ok


def _settings(project: Project, tenant_id: str) -> dict[str, object]:
    return dict(project.t.catalog.get(tenant_id, cached=False).settings)


def test_update_merges_settings_and_sets_queue_limits(sqlite_project: Project) -> None:
    p = sqlite_project
    p.t.create_tenant("acme", settings={"plan": "free", "region": "eu"})

    shown = data(
        p.run(
            "tenants", "update", "acme", "--name", "Acme Inc", "--setting", "plan=gold",
            "--setting", "seats=12", "--weight", "3", "--max-running", "5", "--rate", "2.5",
            "--json",
        )
    )  # fmt: skip
    assert shown["name"] == "Acme Inc"
    expected = {
        "plan": "gold",
        "region": "eu",  # not named: kept
        "seats": 12,  # JSON keeps its type
        "queue": {"weight": 3, "max_running": 5, "rate": 2.5},
    }
    assert shown["settings"] == expected
    assert _settings(p, "acme") == expected
    limits = QueueSettings.from_settings(_settings(p, "acme"))
    assert (limits.weight, limits.max_running, limits.rate) == (3, 5, 2.5)

    # 'none' removes a limit; --unset-setting removes a key; the rest stays.
    table = ok(
        p.run("tenants", "update", "acme", "--max-running", "none", "--unset-setting", "region")
    )
    assert "Acme Inc" in table.stdout
    assert _settings(p, "acme") == {
        "plan": "gold",
        "seats": 12,
        "queue": {"weight": 3, "rate": 2.5},
    }
    # Removing the last limit removes the queue setting itself.
    ok(p.run("tenants", "update", "acme", "--weight", "none", "--rate", "none"))
    assert _settings(p, "acme") == {"plan": "gold", "seats": 12}


def test_update_refuses_bad_input_and_writes_nothing(sqlite_project: Project) -> None:
    p = sqlite_project
    p.t.create_tenant("acme", settings={"plan": "free"})
    before = p.t.catalog.get("acme", cached=False)
    bad_inputs(
        p,
        [
            (["tenants", "update", "nobody", "--weight", "2"], 1, "tenant 'nobody' does not exist"),
            (["tenants", "update", "Bad-Id", "--weight", "2"], 1, "invalid tenant id"),
            (["tenants", "update", "acme", "--weight", "abc"], 2, "'abc' is not an integer"),
            (["tenants", "update", "acme", "--rate", "fast"], 2, "'fast' is not a number"),
            (["tenants", "update", "acme", "--weight", "0"], 1, "'weight' must be an integer"),
            (["tenants", "update", "acme", "--weight", "1001"], 1, "from 1 to 1000"),
            (["tenants", "update", "acme", "--max-running", "0"], 1, "'max_running'"),
            (["tenants", "update", "acme", "--burst", "3"], 1, "'burst' needs 'rate'"),
            (["tenants", "update", "acme", "--setting", "plan"], 2, "expected KEY=VALUE"),
            (["tenants", "update", "acme", "--setting", "=gold"], 2, "expected KEY=VALUE"),
            (["tenants", "update", "acme", "--setting", "queue=[1]"], 1, "must be a mapping"),
            (["tenants", "update", "acme", "--unset-setting", "nope"], 1, "no setting 'nope'"),
            (["tenants", "update", "acme", "--name", " "], 1, "name must not be empty"),
            (["tenants", "update", "acme"], 2, "nothing to update"),
        ],
    )
    after = p.t.catalog.get("acme", cached=False)
    assert (after.name, after.settings, after.updated_at) == (
        before.name,
        before.settings,
        before.updated_at,
    )


def test_non_finite_setting_values_stay_text(sqlite_project: Project) -> None:
    """NaN is not JSON: kept as the text the operator typed, never stored as a float."""
    p = sqlite_project
    p.t.create_tenant("acme")
    shown = data(p.run("tenants", "update", "acme", "--setting", "ratio=NaN", "--json"))
    assert shown["settings"] == {"ratio": "NaN"}

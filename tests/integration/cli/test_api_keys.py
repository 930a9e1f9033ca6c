"""``tenantry api-keys``: a key is shown once, listed without its secret, and revoked for good."""

from __future__ import annotations

import pytest

from tenantry.errors import AuthenticationError
from tests.integration.cli.conftest import Project, bad_inputs, data, ok


def test_issue_list_and_revoke(sqlite_project: Project) -> None:
    p = sqlite_project
    p.create("acme", "globex")

    issued = ok(p.run("api-keys", "issue", "acme", "--name", "billing"))
    key = issued.stdout.strip()
    assert key.startswith("tk_")
    assert "\n" not in key
    assert "shown only now" in issued.stderr
    assert "cannot be shown again" in issued.stderr
    info = p.t.api_keys.verify(key)  # a real, working key for acme
    assert (info.tenant_id, info.name) == ("acme", "billing")
    assert info.id in issued.stderr

    other = data(p.run("api-keys", "issue", "globex", "--json"))
    assert p.t.api_keys.verify(other["key"]).tenant_id == "globex"
    assert other["api_key"]["tenant_id"] == "globex"

    listed = data(p.run("api-keys", "list", "--json"))
    assert [(k["id"], k["tenant_id"]) for k in listed] == [
        (info.id, "acme"),
        (other["api_key"]["id"], "globex"),
    ]
    assert [k["id"] for k in data(p.run("api-keys", "list", "--tenant", "acme", "--json"))] == [
        info.id
    ]
    table = ok(p.run("api-keys", "list"))
    assert info.id in table.stdout
    assert "billing" in table.stdout
    for shown in (table.stdout, str(listed)):
        assert key not in shown
        assert key[16:] not in shown  # the secret part

    revoked = ok(p.run("api-keys", "revoke", info.id))
    assert f"revoked API key {info.id} of tenant 'acme'" in revoked.stdout
    p.t.api_keys.invalidate()
    with pytest.raises(AuthenticationError, match="revoked"):
        p.t.api_keys.verify(key)
    # Revoking twice is fine (as in the HTTP API), and says so.
    assert "already revoked" in ok(p.run("api-keys", "revoke", info.id)).stdout
    assert data(p.run("api-keys", "list", "--exclude-revoked", "--json"))[0]["tenant_id"] == (
        "globex"
    )
    # The whole key is accepted where an id is expected (its id part is used).
    assert data(p.run("api-keys", "revoke", other["key"], "--json"))["revoked_at"] is not None
    assert ok(p.run("api-keys", "list", "--exclude-revoked")).stdout.strip() == "no API keys"


def test_bad_inputs_are_one_line_errors(sqlite_project: Project) -> None:
    p = sqlite_project
    p.create("acme", "globex")
    globex_key = p.t.api_keys.issue("globex").info.id
    bad_inputs(
        p,
        [
            (["api-keys", "issue", "nobody"], 1, "tenant 'nobody' does not exist"),
            (["api-keys", "issue", "Not-An-Id"], 1, "invalid tenant id"),
            (["api-keys", "issue", "acme", "--name", "x" * 201], 1, "at most 200 characters"),
            (["api-keys", "list", "--tenant", "nobody"], 1, "tenant 'nobody' does not exist"),
            (["api-keys", "revoke", "0123456789ab"], 1, "API key '0123456789ab' does not exist"),
            (["api-keys", "revoke", "not-a-key"], 1, "is not an API key id"),
            (
                ["api-keys", "revoke", globex_key, "--tenant", "acme"],
                1,
                f"API key {globex_key!r} does not exist",
            ),
            (["api-keys", "revoke"], 2, "Missing argument"),
        ],
    )
    assert not p.t.api_keys.get(globex_key).is_revoked  # another tenant's key is untouched
    assert p.t.api_keys.list("acme") == []

"""``tenantry queue``: list, show, retry, retry-dead, cancel, purge and prune, on both backends.

acme has shared tables and globex a database of its own, so every command
that works across tenants reads more than one jobs table.
"""

from __future__ import annotations

import pytest

import tenantry.cli.output as cli_output
from tenantry.queue import JobState
from tests.integration.cli.conftest import Project, bad_inputs, data, ok, one_line_error


def _setup(p: Project) -> dict[str, list[int]]:
    p.create("acme")
    p.create("globex", isolation="database")
    acme = p.enqueue("acme", "record", 3) + p.enqueue("acme", "other", 2)
    globex = p.enqueue("globex", "record", 2)
    return {"acme": acme, "globex": globex}


def _ids(result: object) -> list[tuple[str, int]]:
    assert isinstance(result, list)
    return [(j["tenant_id"], j["id"]) for j in result]


def test_list_filters_and_show(project: Project) -> None:
    p = project
    ids = _setup(p)
    (dead,) = p.kill("acme", 1)
    assert dead == ids["acme"][0]

    everything = data(p.run("queue", "list", "--json"))
    assert sorted(_ids(everything)) == sorted(
        [("acme", i) for i in ids["acme"]] + [("globex", i) for i in ids["globex"]]
    )
    order = [(j["created_at"], j["id"]) for j in everything]
    assert order == sorted(order, reverse=True)  # newest first
    assert (
        sorted(
            i
            for _, i in _ids(
                data(p.run("queue", "list", "--tenant", "acme", "--kind", "other", "--json"))
            )
        )
        == ids["acme"][3:]
    )
    assert _ids(data(p.run("queue", "list", "--state", "DEAD", "--json"))) == [("acme", dead)]
    assert len(data(p.run("queue", "list", "--queue", "default", "--limit", "2", "--json"))) == 2
    page = data(p.run("queue", "list", "--limit", "2", "--offset", "2", "--json"))
    assert _ids(page) == _ids(everything)[2:4]
    assert data(p.run("queue", "list", "--queue", "nowhere", "--json")) == []
    table = ok(p.run("queue", "list", "--tenant", "globex"))
    assert "globex" in table.stdout
    assert "acme" not in table.stdout
    assert ok(p.run("queue", "list", "--kind", "missing")).stdout.strip() == "no jobs"

    shown = data(p.run("queue", "show", str(dead), "--tenant", "acme", "--json"))
    assert (shown["id"], shown["state"], shown["kind"], shown["payload"]) == (
        dead,
        "dead",
        "record",
        {"n": 0, "key": "", "sleep": 0.0},
    )
    assert shown["errors"][0]["traceback"].endswith("ValueError: boom")
    assert shown["last_error"]["message"] == "boom"
    text = ok(p.run("queue", "show", str(dead), "--tenant", "acme")).stdout
    assert "ValueError: boom" in text
    assert "dead" in text


def test_retry_cancel_and_retry_dead(project: Project) -> None:
    p = project
    ids = _setup(p)
    first, second, third = p.kill("acme", 3)  # the three 'record' jobs
    other = p.kill("globex", 1)[0]

    retried = data(p.run("queue", "retry", str(first), "--tenant", "acme", "--json"))
    assert retried["state"] == "available"
    assert retried["attempt"] < retried["max_attempts"]  # it may run again
    assert p.state("acme", first) is JobState.AVAILABLE

    cancelled = ok(p.run("queue", "cancel", str(first), "--tenant", "acme"))
    assert f"job {first} of tenant 'acme' cancelled" in cancelled.stdout
    assert p.state("acme", first) is JobState.CANCELLED
    again = ok(p.run("queue", "retry", str(first), "--tenant", "acme"))  # cancelled: allowed
    assert f"job {first} of tenant 'acme' requeued (available;" in again.stdout
    assert p.state("acme", first) is JobState.AVAILABLE

    # Only acme's dead 'record' jobs; acme's 'other' jobs were never dead.
    counts = data(p.run("queue", "retry-dead", "--tenant", "acme", "--kind", "record", "--json"))
    assert counts == {"count": 2, "tenants": {"acme": 2}}
    assert {p.state("acme", i) for i in (second, third)} == {JobState.AVAILABLE}
    assert p.state("globex", other) is JobState.DEAD
    assert data(p.run("queue", "retry-dead", "--kind", "other", "--json"))["count"] == 0

    # Every tenant's, by default.
    p.kill("acme", 1)
    done = ok(p.run("queue", "retry-dead"))
    assert "requeued 2 dead job(s) across 2 tenant(s)" in done.stdout
    assert data(p.run("queue", "list", "--state", "dead", "--json")) == []
    assert ids["globex"][0] == other


def test_purge_asks_first_and_prune_deletes_old_finished_jobs(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = project
    ids = _setup(p)
    dead = p.kill("acme", 2)
    p.run("queue", "cancel", str(ids["acme"][4]), "--tenant", "acme")
    p.kill("globex", 1)

    # Not interactive and no --yes: refused, nothing deleted.
    one_line_error(p.run("queue", "purge"), "refusing to delete", "--yes")
    one_line_error(p.run("queue", "purge", "--tenant", "acme", input="y\n"), "--yes")
    assert len(data(p.run("queue", "list", "--json"))) == 7

    monkeypatch.setattr(cli_output, "stdin_is_interactive", lambda: True)
    declined = p.run("queue", "purge", "--tenant", "acme", input="n\n")
    assert declined.exit_code == 1
    assert "Delete the completed/dead/cancelled jobs of tenant 'acme'?" in declined.stderr
    assert len(data(p.run("queue", "list", "--tenant", "acme", "--json"))) == 5

    # Too recent for --older-than: nothing goes.
    assert data(p.run("queue", "purge", "-y", "--older-than", "1h", "--json")) == {"count": 0}
    # Only acme's cancelled job.
    assert data(
        p.run("queue", "purge", "--tenant", "acme", "--state", "cancelled", "--json", input="y\n")
    ) == {"count": 1}
    assert (
        sorted(
            i
            for _, i in _ids(
                data(p.run("queue", "list", "--state", "dead", "--tenant", "acme", "--json"))
            )
        )
        == dead
    )
    assert ok(p.run("queue", "purge", "-y", "--tenant", "acme")).stdout.strip() == (
        "purged 2 finished job(s)"
    )
    # Unfinished jobs are never purged; globex's dead job waits for prune.
    assert data(p.run("queue", "prune", "--json")) == {"count": 0}  # default: older than 7 days
    assert data(p.run("queue", "prune", "--older-than", "0s", "--json")) == {"count": 1}
    left = data(p.run("queue", "list", "--json"))
    assert {j["state"] for j in left} == {"available"}
    assert len(left) == 3


def test_bad_inputs_are_one_line_errors(project: Project) -> None:
    p = project
    ids = _setup(p)
    job = str(ids["acme"][0])
    newest = str(max(ids["acme"]))
    assert int(newest) not in ids["globex"]
    bad_inputs(
        p,
        [
            (["queue", "list", "--tenant", "nobody"], 1, "tenant 'nobody' does not exist"),
            (["queue", "list", "--tenant", "No!"], 1, "invalid tenant id"),
            (["queue", "list", "--state", "finished"], 2, "'finished' is not one of"),
            (["queue", "list", "--limit", "0"], 2, "--limit"),
            (["queue", "list", "--limit", "501"], 2, "--limit"),
            (["queue", "list", "--limit", "ten"], 2, "--limit"),
            (["queue", "list", "--offset", "-1"], 2, "--offset"),
            (["queue", "list", "--kind", "k" * 201], 2, "1 to 200 characters"),
            (["queue", "show", job], 2, "Missing option '--tenant'"),
            (["queue", "show", "abc", "--tenant", "acme"], 2, "'abc' is not a valid integer"),
            (["queue", "show", "0", "--tenant", "acme"], 2, "JOB_ID"),
            (["queue", "show", "999999", "--tenant", "acme"], 1, "no job 999999 for tenant 'acme'"),
            # An id of acme's is not globex's job (ids are unique per tenant only).
            (["queue", "show", newest, "--tenant", "globex"], 1, f"no job {newest} for tenant"),
            (["queue", "show", job, "--tenant", "nobody"], 1, "tenant 'nobody' does not exist"),
            (["queue", "retry", job, "--tenant", "acme"], 1, "is available; allowed from: dead"),
            (["queue", "retry", "999999", "--tenant", "acme"], 1, "no job 999999"),
            (["queue", "cancel", "999999", "--tenant", "acme"], 1, "no job 999999"),
            (["queue", "retry-dead", "--tenant", "nobody"], 1, "tenant 'nobody' does not exist"),
            (["queue", "purge", "-y", "--state", "running"], 2, "'running' is not one of"),
            (["queue", "purge", "-y", "--tenant", "nobody"], 1, "tenant 'nobody' does not exist"),
            (["queue", "purge", "-y", "--older-than", "soon"], 2, "'soon' is not a duration"),
            (["queue", "prune", "--older-than", "-5m"], 2, "is not a duration"),
            (["queue", "prune", "--older-than", "11000d"], 2, "longer than ten years"),
        ],
    )
    p.run("queue", "cancel", job, "--tenant", "acme")
    one_line_error(
        p.run("queue", "cancel", job, "--tenant", "acme"),
        f"job {job} is cancelled; allowed from: scheduled, available, running, retryable",
    )
    assert len(data(p.run("queue", "list", "--json"))) == 7  # nothing was deleted

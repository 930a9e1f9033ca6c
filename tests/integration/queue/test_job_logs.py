"""What a handler logs carries its job; using the library leaves the application's logging alone."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tenantry import JsonLogFormatter
from tenantry.queue import JobContext, JobRegistry
from tests.integration.queue.handlers import Item
from tests.integration.queue.support import EnvFactory, running, wait_until

#: The application's own logger, as a handler module would create it.
app_log = logging.getLogger("tests.app.jobs")


def _tenantry_loggers() -> dict[str, logging.Logger]:
    loggers = {
        name: logger
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger) and name.split(".")[0] == "tenantry"
    }
    loggers["tenantry"] = logging.getLogger("tenantry")
    return loggers


@pytest.fixture
def root_json() -> Iterator[io.StringIO]:
    """A JSON handler on the root logger, as an application would install one."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


async def test_a_handlers_lines_carry_tenant_job_and_kind(
    make_env: EnvFactory, root_json: io.StringIO
) -> None:
    registry = JobRegistry()

    @registry.handler("mail")
    async def mail(ctx: JobContext, payload: Item) -> None:
        ctx.logger.warning("mailing %d", payload.n)  # tenantry's logger, with its filter

    @registry.handler("report")
    def report(ctx: JobContext, payload: Item) -> None:  # runs in a worker thread
        app_log.warning("reporting %d", payload.n, extra={"pages": payload.n * 10})

    env = make_env("sqlite", "shared", registry)
    jobs = {
        ("acme", "mail"): env.enqueue("acme", "mail", Item(n=1)).id,
        ("globex", "report"): env.enqueue("globex", "report", Item(n=2)).id,
    }
    before = {
        name: (list(logger.handlers), logger.propagate)
        for name, logger in _tenantry_loggers().items()
    }

    def done() -> bool:
        return all(env.counts(tid)["completed"] == 1 for tid in ("acme", "globex"))

    async with running(env.worker()):
        await wait_until(done, what="both jobs completed")

    entries: list[dict[str, Any]] = [json.loads(line) for line in root_json.getvalue().splitlines()]
    mailing = [e for e in entries if e["message"] == "mailing 1"]
    reporting = [e for e in entries if e["message"] == "reporting 2"]
    assert len(mailing) == 1, entries
    assert len(reporting) == 1, entries
    assert mailing[0]["tenant_id"] == "acme"
    assert mailing[0]["job_id"] == jobs[("acme", "mail")]
    assert mailing[0]["kind"] == "mail"
    assert mailing[0]["logger"].startswith("tenantry.")
    assert reporting[0]["tenant_id"] == "globex"
    assert reporting[0]["job_id"] == jobs[("globex", "report")]
    assert reporting[0]["kind"] == "report"
    assert reporting[0]["logger"] == "tests.app.jobs"
    assert reporting[0]["pages"] == 20

    # The library configured nothing: no handler on any tenantry logger, and
    # every record still propagates to the application's handlers.
    after = _tenantry_loggers()
    for name, logger in after.items():
        assert logger.handlers == before.get(name, ([], True))[0] == [], name
        assert logger.propagate, name

"""Log records carry the tenant and the ``log_fields``; ``JsonFormatter`` writes them as JSON."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pytest

import tenantry
from tenantry.tenancy.context import TenantThreadPoolExecutor, bind_context, tenant_context
from tenantry.tenancy.logs import (
    JsonFormatter,
    TenantContextFilter,
    current_log_fields,
    get_logger,
    log_fields,
)


class Lines:
    """A stream handler on a logger of the test's own; the JSON lines it received."""

    def __init__(self, logger: logging.Logger, handler: logging.Handler, stream: io.StringIO):
        self.logger, self.handler, self.stream = logger, handler, stream

    def entries(self) -> list[dict[str, Any]]:
        text = self.stream.getvalue()
        assert text.endswith("\n")
        return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def json_lines(request: pytest.FixtureRequest) -> Iterator[Lines]:
    """A logger of this test alone (no propagation), with a JSON handler and no filter."""
    logger = logging.getLogger(f"tests.logs.{request.node.name}")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield Lines(logger, handler, stream)
    logger.removeHandler(handler)


def test_a_line_outside_any_context_has_every_key(json_lines: Lines) -> None:
    json_lines.logger.info("hello %s", "world")
    [entry] = json_lines.entries()
    assert list(entry)[:7] == [
        "time",
        "level",
        "logger",
        "message",
        "tenant_id",
        "job_id",
        "kind",
    ]
    assert entry["message"] == "hello world"
    assert entry["level"] == "INFO"
    assert entry["logger"] == json_lines.logger.name
    assert entry["tenant_id"] is None
    assert entry["job_id"] is None
    assert entry["kind"] is None
    assert "exc" not in entry
    assert entry["time"].endswith("Z")
    stamp = datetime.fromisoformat(entry["time"])
    assert stamp.utcoffset() == timedelta(0)


def test_tenant_and_fields_come_from_the_context_without_a_filter(json_lines: Lines) -> None:
    with tenant_context("acme"), log_fields(job_id=42, kind="send_mail", attempt=2):
        json_lines.logger.warning("sending")
    json_lines.logger.warning("after")
    inside, after = json_lines.entries()
    assert inside["tenant_id"] == "acme"
    assert inside["job_id"] == 42
    assert inside["kind"] == "send_mail"
    assert inside["attempt"] == 2
    assert (after["tenant_id"], after["job_id"], after["kind"]) == (None, None, None)
    assert "attempt" not in after


def test_extra_fields_and_exceptions(json_lines: Lines) -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    try:
        raise ValueError("broken\nin two lines")
    except ValueError:
        json_lines.logger.exception("failed", extra={"order": 7, "thing": Opaque()})
    text = json_lines.stream.getvalue()
    assert text.count("\n") == 1  # one line, whatever the traceback holds
    [entry] = json_lines.entries()
    assert entry["order"] == 7
    assert entry["thing"] == "opaque!"
    assert entry["level"] == "ERROR"
    assert entry["exc"].startswith("Traceback")
    assert "ValueError: broken\nin two lines" in entry["exc"]


def test_extra_beats_the_block_and_the_core_keys_cannot_be_overwritten(json_lines: Lines) -> None:
    with log_fields(job_id=1, level="sneaky"):
        json_lines.logger.info("x", extra={"job_id": 2})
    [entry] = json_lines.entries()
    assert entry["job_id"] == 2
    assert entry["level"] == "INFO"


def test_blocks_nest_and_restore() -> None:
    assert current_log_fields() == {}
    with log_fields(job_id=1, kind="a"):
        with log_fields(kind="b", step="x"):
            assert current_log_fields() == {"job_id": 1, "kind": "b", "step": "x"}
        assert current_log_fields() == {"job_id": 1, "kind": "a"}
    assert current_log_fields() == {}


def test_a_block_ends_even_when_its_body_raises() -> None:
    with pytest.raises(RuntimeError), log_fields(job_id=1):
        raise RuntimeError
    assert current_log_fields() == {}


async def test_fields_follow_tasks_and_bound_threads() -> None:
    async def in_task() -> dict[str, Any]:
        await asyncio.sleep(0)
        return dict(current_log_fields())

    async with log_fields(job_id=5):
        task = asyncio.create_task(in_task())
        bound = bind_context(lambda: dict(current_log_fields()))
    assert await task == {"job_id": 5}
    # bind_context captured the block; the thread runs after it ended.
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(bound).result() == {"job_id": 5}
        assert pool.submit(lambda: dict(current_log_fields())).result() == {}
    with log_fields(kind="k"), TenantThreadPoolExecutor(1) as pool:
        assert pool.submit(lambda: dict(current_log_fields())).result() == {"kind": "k"}


def test_the_filter_puts_tenant_and_fields_on_the_record() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    with tenant_context("acme"), log_fields(job_id=3, kind="k"):
        assert TenantContextFilter().filter(record)
    attrs = record.__dict__
    assert (attrs["tenant_id"], attrs["job_id"], attrs["kind"]) == ("acme", 3, "k")
    outside = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    TenantContextFilter().filter(outside)
    assert outside.__dict__["tenant_id"] == "-"
    assert "job_id" not in outside.__dict__


def test_the_record_wins_over_the_context_at_format_time(json_lines: Lines) -> None:
    """A record filtered in one context and formatted in another keeps what it was given."""
    record = json_lines.logger.makeRecord(
        json_lines.logger.name, logging.INFO, __file__, 1, "m", (), None
    )
    with tenant_context("acme"), log_fields(job_id=3, kind="k"):
        TenantContextFilter().filter(record)
    with tenant_context("globex"), log_fields(job_id=4, kind="other"):
        entry = json.loads(JsonFormatter().format(record))
    assert (entry["tenant_id"], entry["job_id"], entry["kind"]) == ("acme", 3, "k")


def test_tenantry_loggers_get_the_filter_once() -> None:
    logger = get_logger("tenantry.tests.once")
    get_logger("tenantry.tests.once")
    assert sum(isinstance(f, TenantContextFilter) for f in logger.filters) == 1
    assert logger.handlers == []


def test_the_formatter_is_public_under_the_package() -> None:
    assert tenantry.JsonLogFormatter is JsonFormatter

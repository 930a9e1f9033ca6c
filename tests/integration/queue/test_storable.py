"""What PostgreSQL cannot store is refused before anything is written, on every backend.

jsonb has no NUL character (``\\u0000``) and no NaN or Infinity; text columns
hold no NUL byte. Refused only there, such a payload would be a database
error mid-enqueue on PostgreSQL but a stored job on SQLite, and a tenant
moved from one store to another could not take its jobs along. So every
backend gives the same typed error, and a handler's failure message with a
NUL in it is recorded, not lost.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from tenantry import tenant_context
from tenantry.errors import ConfigError, PayloadValidationError
from tenantry.queue import JobContext, JobRegistry, JobState
from tests.integration.queue.support import CASES, EnvFactory, running, wait_until


class Blob(BaseModel):
    data: bytes


def _registry() -> JobRegistry:
    registry = JobRegistry()

    @registry.handler("doc")
    async def doc(ctx: JobContext, payload: dict[str, Any]) -> None:
        return None

    @registry.handler("blob")
    async def blob(ctx: JobContext, payload: Blob) -> None:
        return None

    @registry.handler("boom", max_attempts=1)
    async def boom(ctx: JobContext, payload: dict[str, Any]) -> None:
        raise ValueError("bad byte \x00 in the upstream reply")

    return registry


REFUSED_PAYLOADS = [
    pytest.param("doc", {"s": "a\x00b"}, "NUL", id="nul-in-a-string"),
    pytest.param("doc", {"a\x00": 1}, "NUL", id="nul-in-a-key"),
    pytest.param("doc", {"deep": [{"s": "\\\x00"}]}, "NUL", id="nul-after-a-backslash"),
    pytest.param("blob", Blob(data=b"\x00\x01"), "NUL", id="raw-bytes"),
    pytest.param("doc", {"x": float("nan")}, "finite", id="nan"),
    pytest.param("doc", {"x": [1.0, float("-inf")]}, "finite", id="infinity"),
]


@CASES
@pytest.mark.parametrize(("kind", "payload", "why"), REFUSED_PAYLOADS)
async def test_an_unstorable_payload_is_refused_on_every_path(
    make_env: EnvFactory, backend: str, mode: str, kind: str, payload: Any, why: str
) -> None:
    env = make_env(backend, mode, _registry())
    good = {"s": "fine"}
    with tenant_context("acme"):
        with pytest.raises(PayloadValidationError, match=why):
            env.queue.enqueue(kind, payload)
        # In arrays, and in a batch large enough for COPY: the one bad payload
        # spoils the batch, wherever it sits.
        for batch in ([good, payload], [good] * 150 + [payload] + [good] * 150):
            with pytest.raises(PayloadValidationError, match=why):
                env.queue.enqueue_many(kind, batch if kind == "doc" else [payload] * 3)
        with env.t.session() as s:
            with pytest.raises(PayloadValidationError, match=why):
                env.queue.enqueue(kind, payload, session=s)
            # The caller's transaction is untouched: it can go on and commit.
            env.queue.enqueue("doc", good, session=s)
            s.commit()
        with pytest.raises(PayloadValidationError, match=why):
            env.queue.enqueue(kind, payload, idempotency_key="k1")
    async with tenant_context("acme"):
        with pytest.raises(PayloadValidationError, match=why):
            await env.queue.aenqueue(kind, payload)
    assert env.total("acme") == 1


@CASES
async def test_escaped_look_alikes_are_stored_as_they_are(
    make_env: EnvFactory, backend: str, mode: str
) -> None:
    """A backslash then ``u0000`` is text, not NUL: JSON writes it ``\\\\u0000``."""
    env = make_env(backend, mode, _registry())
    payloads = [
        {"s": "\\u0000"},
        {"s": "\\\\u0000 and \\x00"},
        {"s": "u0000", "null": None},
        {"s": "\u0001 \u00e9 \U0001f600"},
    ]
    with tenant_context("acme"):
        one = env.queue.enqueue("doc", payloads[0])
        many = env.queue.enqueue_many("doc", payloads)
        copied = env.queue.enqueue_many("doc", payloads * 60)
    assert env.job("acme", one.id).payload == payloads[0]
    assert [env.job("acme", j.id).payload for j in many] == payloads
    assert [env.job("acme", j.id).payload for j in copied[:4]] == payloads


@CASES
def test_nul_in_a_text_option_is_refused(make_env: EnvFactory, backend: str, mode: str) -> None:
    env = make_env(backend, mode, _registry())
    with tenant_context("acme"):
        refused: list[dict[str, Any]] = [
            {"queue": "a\x00"},
            {"idempotency_key": "\x00"},
            {"correlation_id": "c\x00"},
        ]
        for options in refused:
            with pytest.raises(ConfigError, match="NUL"):
                env.queue.enqueue("doc", {"s": "x"}, **options)
    assert env.total("acme") == 0


@CASES
async def test_a_failure_message_with_nul_is_recorded(
    make_env: EnvFactory, backend: str, mode: str
) -> None:
    """The error history is jsonb too: the NUL is written as ``\\x00``, the failure kept."""
    env = make_env(backend, mode, _registry())
    job = env.enqueue("acme", "boom", {"s": "x"})
    async with running(env.worker()):
        await wait_until(lambda: env.state("acme", job.id) is JobState.DEAD, 10)
    (error,) = env.job("acme", job.id).errors
    assert error["message"] == "bad byte \\x00 in the upstream reply"
    assert "\x00" not in error["traceback"]

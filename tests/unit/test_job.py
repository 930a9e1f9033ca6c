"""A claimed job keeps its payload as JSON text until it is read, and is a plain Job."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from datetime import UTC, datetime

import pytest

from tenantry.queue.drivers.postgres.rows import claimed_jobs
from tenantry.queue.job import PAYLOAD_TEXT, Job, JobState

AT = datetime(2026, 11, 29, 5, 0, tzinfo=UTC)


def claimed(payload_text: str, errors: str | None = None) -> Job:
    row = (7, "acme", "default", "mail", payload_text, 3, 1, 5, AT, AT, AT, AT, errors, "k", "c")
    (job,) = claimed_jobs([row], "token", "w1")
    return job


def built(payload: object, errors: list[dict[str, object]] | None = None) -> Job:
    return Job(
        7, "acme", "default", "mail", payload, 3, JobState.RUNNING, 1, 5, AT, AT, AT, None, AT,
        "token", "w1", errors or [], "k", "c",
    )  # fmt: skip


def test_a_claimed_job_equals_the_job_its_init_builds() -> None:
    job = claimed('{"to": "a@example.com", "n": [1, 2]}')
    assert PAYLOAD_TEXT in job.__dict__
    assert "payload" not in job.__dict__  # not decoded yet
    assert job == built({"to": "a@example.com", "n": [1, 2]})
    assert job.payload == {"to": "a@example.com", "n": [1, 2]}
    assert job.payload is job.payload  # decoded once, then an attribute


def test_a_claimed_job_serialises_like_any_other() -> None:
    with_errors = claimed('{"x": 1}', '[{"attempt": 1}]')
    assert with_errors.to_dict() == built({"x": 1}, [{"attempt": 1}]).to_dict()
    plain = built({"x": 1})
    assert PAYLOAD_TEXT not in claimed('{"x": 1}').to_dict()
    assert repr(claimed('{"x": 1}')) == repr(plain)
    assert dataclasses.asdict(claimed('{"x": 1}')) == dataclasses.asdict(plain)
    assert dataclasses.replace(claimed('{"x": 1}'), attempt=2) == dataclasses.replace(
        plain, attempt=2
    )
    assert copy.copy(claimed('{"x": 1}')) == plain
    assert pickle.loads(pickle.dumps(claimed('{"x": 1}'))) == plain


def test_a_claimed_job_stays_frozen_and_reports_missing_attributes() -> None:
    job = claimed("[1]")
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.attempt = 3  # type: ignore[misc]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        job.nope  # type: ignore[attr-defined]  # noqa: B018
    assert built([1]).payload == [1]

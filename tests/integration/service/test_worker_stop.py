"""Stopping the embedded worker hard: shutdown goes on, and every way it can end is logged."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tenantry.service import app as service_app

LOGGER = "tenantry.service.app"


async def test_a_worker_failing_after_a_hard_stop_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fail() -> None:
        raise RuntimeError("boom in the handler")

    task = asyncio.create_task(fail())
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await service_app._wait_after_hard_stop(task)
    assert "embedded worker failed while stopping hard" in caplog.text
    assert "boom in the handler" in caplog.text


async def test_a_worker_ignoring_a_hard_stop_is_cancelled_and_logged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_app, "_HARD_STOP_WAIT", 0.01)
    task = asyncio.create_task(asyncio.sleep(3600))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await service_app._wait_after_hard_stop(task)
    assert task.cancelled()
    assert "did not stop after a hard stop" in caplog.text


async def test_a_worker_cancelled_while_stopping_hard_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    task = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    task.cancel()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await service_app._wait_after_hard_stop(task)
    assert "cancelled while stopping hard" in caplog.text


async def test_a_worker_stopping_in_time_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    task = asyncio.create_task(asyncio.sleep(0))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await service_app._wait_after_hard_stop(task)
    assert caplog.records == []

"""WorkerOptions refuses settings that cannot work when it is built, not mid-run."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from tenantry import WorkerOptions
from tenantry.errors import ConfigError


def test_the_defaults_are_an_embedded_worker() -> None:
    options = WorkerOptions()
    assert (options.concurrency, options.prefetch, options.fair) == (10, None, True)
    assert options.freeze_gc is False


@pytest.mark.parametrize(
    ("field", "value"),
    [("concurrency", 0), ("lease_seconds", -1.0), ("poll_interval", -0.5), ("prefetch", -1)],
)
def test_impossible_settings_are_refused_by_name(field: str, value: float) -> None:
    settings: dict[str, Any] = {field: value}
    with pytest.raises(ConfigError, match=field):
        WorkerOptions(**settings)


def test_options_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        WorkerOptions().concurrency = 3  # type: ignore[misc]

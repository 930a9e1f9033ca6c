"""Retry delays: exponential backoff with jitter.

Jitter spreads retries of jobs that failed together (a database blip, a
downstream outage) so they do not return as one synchronized wave.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tenantry.errors import ConfigError


@dataclass(frozen=True)
class RetryPolicy:
    """``delay(n) = min(max_delay, base * factor ** (n - 1)) * (1 ± jitter)``."""

    max_attempts: int = 20
    base: float = 1.0
    factor: float = 2.0
    max_delay: float = 3600.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        if self.base < 0 or self.factor < 1 or self.max_delay < 0:
            raise ConfigError("base and max_delay must be >= 0 and factor >= 1")
        if not 0 <= self.jitter <= 1:
            raise ConfigError("jitter must be between 0 and 1")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number *attempt* (1-based)."""
        raw = self.base * self.factor ** max(0, min(attempt - 1, 64))
        capped = min(self.max_delay, raw)
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, capped * (1 + spread))

"""Exponential back-off: the one schedule every retry loop of the worker follows."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Hashable


class ExponentialBackoff:
    """Delays that double after each failure, up to a cap, tracked per key.

    Per key, so that one store that is away does not hold back the others.
    ``delay(n)`` is the schedule itself, for loops that count their own
    attempts; ``failed``/``ready``/``ok`` keep the count and the deadline.
    *jitter* spreads each delay by up to that fraction either way, so that
    many processes failing together do not retry in step.
    """

    def __init__(
        self,
        base: float,
        cap: float,
        *,
        jitter: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError("need 0 < base <= cap")
        if not 0.0 <= jitter < 1.0:
            raise ValueError("jitter is a fraction in [0, 1)")
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self._clock = clock
        self._failures: dict[Hashable, int] = {}
        self._until: dict[Hashable, float] = {}

    def delay(self, failures: int) -> float:
        """The wait after the *failures*-th failure in a row (0: the first)."""
        delay = min(self.cap, self.base * 2.0 ** min(failures, 64))
        if self.jitter:
            delay *= 1.0 + random.uniform(-self.jitter, self.jitter)  # noqa: S311 - not crypto
        return delay

    def failed(self, key: Hashable = None) -> float:
        """Count a failure of *key*; returns how long it should wait."""
        failures = self._failures.get(key, 0)
        delay = self.delay(failures)
        self._failures[key] = failures + 1
        self._until[key] = self._clock() + delay
        return delay

    def ready(self, key: Hashable = None) -> bool:
        """Whether *key*'s wait is over (a key that never failed is ready)."""
        until = self._until.get(key)
        return until is None or self._clock() >= until

    def ok(self, key: Hashable = None) -> bool:
        """*key* succeeded: start its schedule over. True if it had been failing."""
        if key not in self._failures:
            return False
        del self._failures[key]
        self._until.pop(key, None)
        return True

    def failures(self, key: Hashable = None) -> int:
        """Failures of *key* since it last succeeded."""
        return self._failures.get(key, 0)

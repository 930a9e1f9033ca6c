"""The PostgreSQL queue driver (``PostgresDriver``) and its statements."""

from __future__ import annotations

from tenantry.queue.drivers.postgres.driver import GENERIC_PLANS, PostgresDriver
from tenantry.queue.drivers.postgres.queries import (
    CHANNEL,
    CLAIM_SESSION_OPTIONS,
    CLAIM_SESSION_SETTINGS,
)

__all__ = [
    "CHANNEL",
    "CLAIM_SESSION_OPTIONS",
    "CLAIM_SESSION_SETTINGS",
    "GENERIC_PLANS",
    "PostgresDriver",
]

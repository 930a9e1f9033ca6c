"""The PostgreSQL queue driver (``PostgresDriver``) and its statements.

The statements' constants load eagerly (they are plain text); the driver
itself, which needs psycopg (the 'postgres' extra), loads on first use, so a
program on SQLite alone never imports psycopg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tenantry.queue.drivers.postgres.queries import (
    CHANNEL,
    CLAIM_SESSION_OPTIONS,
    CLAIM_SESSION_SETTINGS,
    GENERIC_PLANS,
    SETTINGS_PER_TRANSACTION,
)

if TYPE_CHECKING:
    from tenantry.queue.drivers.postgres.driver import PostgresDriver


def __getattr__(name: str) -> Any:
    if name == "PostgresDriver":
        from tenantry.queue.drivers.postgres.driver import PostgresDriver

        return PostgresDriver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CHANNEL",
    "CLAIM_SESSION_OPTIONS",
    "CLAIM_SESSION_SETTINGS",
    "GENERIC_PLANS",
    "SETTINGS_PER_TRANSACTION",
    "PostgresDriver",
]

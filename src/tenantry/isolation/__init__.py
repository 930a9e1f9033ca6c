"""Isolation modes, one class each behind :class:`IsolationStrategy`."""

from __future__ import annotations

from tenantry.catalog import IsolationMode
from tenantry.isolation.base import IsolationStrategy
from tenantry.isolation.database import DatabaseIsolation
from tenantry.isolation.schema import SchemaIsolation, schema_name
from tenantry.isolation.shared import SharedIsolation

STRATEGIES: dict[IsolationMode, IsolationStrategy] = {
    IsolationMode.SHARED: SharedIsolation(),
    IsolationMode.SCHEMA: SchemaIsolation(),
    IsolationMode.DATABASE: DatabaseIsolation(),
}


def strategy_for(mode: IsolationMode | str) -> IsolationStrategy:
    return STRATEGIES[IsolationMode(mode)]


__all__ = [
    "STRATEGIES",
    "DatabaseIsolation",
    "IsolationStrategy",
    "SchemaIsolation",
    "SharedIsolation",
    "schema_name",
    "strategy_for",
]

"""Isolation modes, one class each behind :class:`IsolationStrategy`."""

from __future__ import annotations

from tenantry.tenancy.catalog import IsolationMode
from tenantry.tenancy.isolation.base import IsolationStrategy
from tenantry.tenancy.isolation.database import DatabaseIsolation
from tenantry.tenancy.isolation.schema import SchemaIsolation, schema_name
from tenantry.tenancy.isolation.shared import SharedIsolation

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

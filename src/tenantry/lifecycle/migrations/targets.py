"""What a migration run works on and what it reports: targets, versions, results.

A *target* is one version table: the global tables, a store's shared tables
(once for all its shared tenants), one schema or one database.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

from tenantry.tenancy.catalog import Tenant, TenantStatus
from tenantry.tenancy.isolation import schema_name


class TargetKind(StrEnum):
    GLOBAL = "global"
    SHARED = "shared"
    SCHEMA = "schema"
    DATABASE = "database"


class Outcome(StrEnum):
    UPGRADED = "upgraded"
    DOWNGRADED = "downgraded"
    CURRENT = "current"  # already where the run goes (a crashed run's status was restored)
    FAILED = "failed"
    NOT_RUN = "not run"  # a failure stopped the run before this target started


@dataclass(frozen=True)
class Target:
    """One version table: global tables, a store's shared tables, a schema or a database."""

    kind: TargetKind
    store: str
    tenant_id: str | None = None
    tenants: tuple[Tenant, ...] = field(default=(), compare=False)  # served from it

    @property
    def label(self) -> str:
        if self.kind is TargetKind.GLOBAL:
            return "(global tables)"
        if self.kind is TargetKind.SHARED:
            return f"(shared tables on {self.store})"
        return str(self.tenant_id)

    @property
    def schema(self) -> str | None:
        """The schema holding the tables and the version table (None: the default one)."""
        if self.kind is TargetKind.SCHEMA and self.tenant_id is not None:
            return schema_name(self.tenant_id)
        return None

    @property
    def interrupted(self) -> bool:
        return any(t.status is TenantStatus.MIGRATING for t in self.tenants)


@dataclass(frozen=True)
class TargetVersion:
    target: Target
    revision: str | None
    head: str | None

    @property
    def behind(self) -> bool:
        return self.revision != self.head or self.target.interrupted


@dataclass(frozen=True)
class Result:
    target: Target
    outcome: Outcome
    before: str | None = None
    after: str | None = None
    error: str | None = None
    seconds: float = 0.0


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)
    #: Targets found where the run goes (head, or a downgrade's destination), not touched.
    untouched: int = 0

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if r.outcome is Outcome.FAILED]

    def outcomes(self) -> Counter[Outcome]:
        return Counter(r.outcome for r in self.results)

    def transitions(self) -> Counter[tuple[str | None, str | None, Outcome]]:
        """How many targets went from which revision to which (and how it ended)."""
        return Counter((r.before, r.after, r.outcome) for r in self.results)

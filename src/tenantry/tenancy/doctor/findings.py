"""What ``tenantry doctor`` reports: a :class:`Finding` per problem, and whether they fail a run."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from tenantry.tenancy.urls import mask_url

Severity = Literal["error", "warn"]


@dataclass(frozen=True)
class Finding:
    """One way a deployment falls short of the wall, and what fixes it.

    *check* names the family (``rls``, ``functions``, ``login``, ``keys``,
    ``grants``, ``secrets``, ``pooler``, ``sqlite``, ``connect``) so scripts
    and tests can select findings without parsing prose. A ``warn`` finding
    (a slow index, a literal password in the file) does not fail
    ``tenantry doctor`` unless ``--strict``.
    """

    store: str
    object: str
    problem: str
    fix: str
    tenant: str | None = None
    severity: Severity = "error"
    check: str = ""

    def line(self) -> str:
        """``<object>: <problem> — fix: <SQL or setting>`` (warnings say so)."""
        problem = f"warning: {self.problem}" if self.severity == "warn" else self.problem
        return f"{self.object}: {problem} — fix: {self.fix}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def failed(findings: Iterable[Finding], *, strict: bool = False) -> bool:
    """Whether *findings* should fail the run: any error, or any warning when *strict*."""
    return any(f.severity == "error" or strict for f in findings)


def unreachable(store: str, what: str, exc: SQLAlchemyError) -> Finding:
    """A finding for what could not be checked: a check that cannot run must not pass.

    The reason is the driver's first line, with any password in it masked.
    """
    raw = str(exc.orig) if isinstance(exc, DBAPIError) else str(exc)
    reason = mask_url(raw.strip().splitlines()[0] if raw.strip() else type(exc).__name__)
    return Finding(
        store,
        what,
        f"could not be checked: {reason}",
        "make it reachable with the store's admin_url and run tenantry doctor again",
        check="connect",
    )

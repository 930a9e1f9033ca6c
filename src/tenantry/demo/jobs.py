"""The demo's job: record a product change in the audit table, exactly once.

The handler is transactional (its audit row commits together with the job's
completion), tenant-scoped (the worker sets the job's tenant, so
``ctx.session`` sees only that tenant's tables) and idempotent (a change
already recorded is skipped, and the table's unique key backs that up).

To give the dead-letter list something to show, a simulated search index
refuses product names containing "cursed": such a job fails, is retried with
backoff and ends up dead, with its error and traceback kept.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from tenantry.demo.models import ProductAudit
from tenantry.queue import JobContext, JobRegistry, RetryPolicy

registry = JobRegistry()

#: On SQLite a transaction that reads before it writes is refused ("database is
#: locked") when another connection commits in between. The handler reads
#: first, so its transaction starts as a write transaction (ignored elsewhere).
WRITE_FIRST = {"sqlite_begin": "BEGIN IMMEDIATE"}


class SearchIndexError(RuntimeError):
    """The (simulated) search index refused the product."""


class ProductUpdate(BaseModel):
    change_id: str = Field(min_length=1, max_length=36)
    product_id: int
    old_name: str
    new_name: str
    old_price_cents: int
    new_price_cents: int
    changed_at: datetime


@registry.handler(
    "product_update",
    transactional=True,
    retry=RetryPolicy(max_attempts=3, base=0.2, max_delay=2.0),
)
def record_product_update(ctx: JobContext, payload: ProductUpdate) -> None:
    session: Session = ctx.session
    session.connection(execution_options=WRITE_FIRST)
    done = session.scalar(
        select(ProductAudit.id).where(ProductAudit.change_id == payload.change_id)
    )
    if done is not None:
        ctx.logger.info("change %s is already recorded", payload.change_id)
        return
    if "cursed" in payload.new_name.lower():
        raise SearchIndexError(
            f"the search index refused product {payload.product_id} named {payload.new_name!r}"
        )
    session.add(
        ProductAudit(
            change_id=payload.change_id,
            product_id=payload.product_id,
            old_name=payload.old_name,
            new_name=payload.new_name,
            old_price_cents=payload.old_price_cents,
            new_price_cents=payload.new_price_cents,
            changed_at=payload.changed_at,
            recorded_at=datetime.now(UTC),
        )
    )

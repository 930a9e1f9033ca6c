"""The demo's tenant tables: products, and the audit trail the job handler writes.

They live on a metadata of their own (:class:`DemoBase`), not on
:class:`tenantry.TenantBase`: importing the demo must never add tables to an
application's tenants, nor the application's tables to the demo tenants. An
application declares the same classes on ``TenantBase``
(examples/catalogue/README.md shows how).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tenantry.tenancy.models import TenantScoped, tenant_metadata


class DemoBase(TenantScoped, DeclarativeBase):
    """Declarative base of the demo tables (a tenant metadata of their own)."""

    metadata = tenant_metadata()


class DemoProduct(DemoBase):
    __tablename__ = "demo_products"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    price_cents: Mapped[int] = mapped_column(default=0)


class ProductAudit(DemoBase):
    """One recorded product change. ``change_id`` is unique per tenant: a change is
    recorded once, however often its job runs."""

    __tablename__ = "demo_product_audit"
    __table_args__ = (UniqueConstraint("tenant_id", "change_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    change_id: Mapped[str] = mapped_column(String(36))
    product_id: Mapped[int]
    old_name: Mapped[str] = mapped_column(String(100))
    new_name: Mapped[str] = mapped_column(String(100))
    old_price_cents: Mapped[int]
    new_price_cents: Mapped[int]
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

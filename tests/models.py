"""Tables the tests declare, the way an application would."""

from __future__ import annotations

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from tenantry import GlobalBase, TenantBase


class Note(TenantBase):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(200))


class Product(TenantBase):
    __tablename__ = "products"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    price_cents: Mapped[int] = mapped_column(default=0)
    reviews: Mapped[list[Review]] = relationship(back_populates="product")


class Review(TenantBase):
    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    stars: Mapped[int]
    product: Mapped[Product] = relationship(back_populates="reviews")


class Plan(GlobalBase):
    """A global table: the same rows for every tenant."""

    __tablename__ = "plans"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)

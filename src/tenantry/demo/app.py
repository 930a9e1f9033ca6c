"""The catalogue's FastAPI app: tenant-scoped products behind ``TenantMiddleware``.

A request names its tenant by API key (``Authorization: Bearer tk_...``), by
host (``acme.localhost:8001``: browsers resolve ``*.localhost`` to this
machine) or by the ``X-Tenant-ID`` header; every session it opens is bound to
that tenant. Host and header alone are accepted only because this is a local
demo (``trust_hints=True``): a real app leaves that off, so that only a token
or an API key gives a request its tenant (see docs/web.md).
``PUT /products/{id}`` changes the product and enqueues the audit job in the
same transaction: both commit, or neither does.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated

from fastapi import FastAPI, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from starlette.middleware import Middleware

from tenantry.demo.jobs import WRITE_FIRST, ProductUpdate
from tenantry.demo.models import DemoProduct, ProductAudit
from tenantry.queue import Queue
from tenantry.tenantry import Tenantry
from tenantry.web import APIKeyResolver, HeaderResolver, HostResolver, TenantMiddleware
from tenantry.web.fastapi import TenantDep, TenantSessionDep, add_error_handlers


class ProductOut(BaseModel):
    id: int
    name: str
    price_cents: int


class ProductChange(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\x00]*$")] | None = None
    price_cents: Annotated[int, Field(ge=0, le=1_000_000_000)] | None = None


class UpdateOut(BaseModel):
    product: ProductOut
    job_id: int
    change_id: str


class AuditOut(BaseModel):
    change_id: str
    product_id: int
    old_name: str
    new_name: str
    old_price_cents: int
    new_price_cents: int
    changed_at: datetime
    recorded_at: datetime


def _product(p: DemoProduct) -> ProductOut:
    return ProductOut(id=p.id, name=p.name, price_cents=p.price_cents)


def create_catalogue_app(
    tenantry: Tenantry, queue: Queue, *, base_domains: Sequence[str] = ("localhost",)
) -> FastAPI:
    """The catalogue app on *tenantry*, enqueueing through *queue*."""
    app = FastAPI(
        title="Product catalogue (tenantry demo)",
        description="Send X-Tenant-ID: acme (or use acme.localhost, or a tenant API key).",
        middleware=[
            Middleware(
                TenantMiddleware,
                tenantry=tenantry,
                resolvers=[
                    APIKeyResolver(tenantry.api_keys),
                    HostResolver(list(base_domains)),
                    HeaderResolver("X-Tenant-ID"),
                ],
                exclude_paths=["/docs", "/openapi.json", "/health"],
                # A local demo: let curl and the browser pick a tenant by header or host.
                trust_hints=True,
            )
        ],
    )
    add_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/products")
    async def list_products(tenant: TenantDep, session: TenantSessionDep) -> list[ProductOut]:
        """The tenant's products, and only those."""
        rows = await session.scalars(select(DemoProduct).order_by(DemoProduct.id))
        return [_product(p) for p in rows]

    @app.get("/products/{product_id}", response_model=None)
    async def show_product(
        product_id: Annotated[int, Path(ge=1, le=2**31)],
        tenant: TenantDep,
        session: TenantSessionDep,
    ) -> ProductOut | JSONResponse:
        product = await session.get(DemoProduct, product_id)
        if product is None:
            return _not_found(product_id)
        return _product(product)

    @app.put("/products/{product_id}", response_model=None)
    async def update_product(
        product_id: Annotated[int, Path(ge=1, le=2**31)],
        change: ProductChange,
        tenant: TenantDep,
        session: TenantSessionDep,
    ) -> UpdateOut | JSONResponse:
        """Change a product and enqueue its audit job in the same transaction."""
        await session.connection(execution_options=WRITE_FIRST)  # read, then write
        product = await session.get(DemoProduct, product_id)
        if product is None:  # another tenant's product is not found either
            return _not_found(product_id)
        old_name, old_price = product.name, product.price_cents
        if change.name is not None:
            product.name = change.name
        if change.price_cents is not None:
            product.price_cents = change.price_cents
        update = ProductUpdate(
            change_id=str(uuid.uuid4()),
            product_id=product.id,
            old_name=old_name,
            new_name=product.name,
            old_price_cents=old_price,
            new_price_cents=product.price_cents,
            changed_at=datetime.now(UTC),
        )
        job = await queue.aenqueue("product_update", update, session=session)
        await session.commit()
        return UpdateOut(product=_product(product), job_id=job.id, change_id=update.change_id)

    @app.get("/audit")
    async def audit(
        tenant: TenantDep,
        session: TenantSessionDep,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> list[AuditOut]:
        """Recorded changes, newest first (written by the job handler)."""
        rows = await session.scalars(
            select(ProductAudit).order_by(ProductAudit.id.desc()).limit(limit)
        )
        return [
            AuditOut(
                change_id=a.change_id,
                product_id=a.product_id,
                old_name=a.old_name,
                new_name=a.new_name,
                old_price_cents=a.old_price_cents,
                new_price_cents=a.new_price_cents,
                changed_at=a.changed_at,
                recorded_at=a.recorded_at,
            )
            for a in rows
        ]

    return app


def _not_found(product_id: int) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": "product_not_found", "message": f"no product {product_id}"}},
        status_code=404,
    )

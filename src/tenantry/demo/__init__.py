"""The product-catalogue demo app that ``tenantry demo`` runs (see examples/catalogue/).

Each tenant has products. ``PUT /products/{id}`` changes a product and
enqueues a ``product_update`` job *in the same transaction*; the job's
transactional handler records the change in an audit table, once. It ships
inside the package (not only under ``examples/``) so that the installed
``tenantry demo`` command can import it.

``models`` and ``jobs`` need only tenantry itself; ``app`` (the FastAPI app)
and ``runner`` (servers and traffic) need the ``serve`` extra, so they are
not imported here.
"""

from __future__ import annotations

from tenantry.demo.jobs import ProductUpdate, SearchIndexError, registry
from tenantry.demo.models import DemoBase, DemoProduct, ProductAudit

__all__ = [
    "DemoBase",
    "DemoProduct",
    "ProductAudit",
    "ProductUpdate",
    "SearchIndexError",
    "registry",
]

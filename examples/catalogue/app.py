"""The product-catalogue app on your own configuration, without ``tenantry demo``.

From the repository root::

    export TENANTRY_ADMIN_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')
    MODELS=tenantry.demo.models:DemoBase
    tenantry --models $MODELS tenants create acme
    tenantry --models $MODELS serve --app tenantry.demo.jobs:registry &
    uvicorn examples.catalogue.app:app --port 8001

    curl -X PUT -H 'X-Tenant-ID: acme' -H 'Content-Type: application/json' \\
         -d '{"name": "anvil", "price_cents": 1999}' http://127.0.0.1:8001/products/1

The code is in :mod:`tenantry.demo` (models, job handler, FastAPI app), so
that the installed ``tenantry demo`` command can run it too; this module only
wires it to the configuration (``tenantry.toml``, ``TENANTRY_DATABASE_URL``
or SQLite under ``./tenantry-data``, as for every tenantry command).
"""

from __future__ import annotations

from tenantry import Queue, Tenantry
from tenantry.demo import DemoBase, registry
from tenantry.demo.app import create_catalogue_app

tenantry = Tenantry(tenant_metadata=DemoBase.metadata)
queue = Queue(tenantry, registry)
app = create_catalogue_app(tenantry, queue)

"""``tenantry serve``: the admin JSON API, dashboard, Prometheus metrics and a worker.

Needs the ``serve`` extra (``pip install 'tenantry[serve]'``): FastAPI,
uvicorn, Jinja2 and prometheus-client. See docs/service.md.
"""

from __future__ import annotations

from tenantry.service.app import create_app
from tenantry.service.settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]

"""The service's ASGI app: admin API, dashboard, metrics and an embedded worker.

:func:`create_app` builds a FastAPI app around one :class:`~tenantry.Tenantry`.
The embedded :class:`~tenantry.Worker` runs in the app's own event loop and
lives exactly as long as the app (it starts and drains in the lifespan), so
one ``tenantry serve`` process is a complete deployment for small setups;
bigger ones run ``tenantry serve --no-worker`` beside ``tenantry worker``
processes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenantry import __version__
from tenantry.errors import TenantryError
from tenantry.queue import JobRegistry, Queue, Worker
from tenantry.queue.worker import WorkerOptions
from tenantry.service import api, dashboard
from tenantry.service.auth import Auth
from tenantry.service.errors import error_body, status_for
from tenantry.service.metrics import CONTENT_TYPE, ServiceMetrics
from tenantry.service.monitor import Monitor
from tenantry.service.origin import OriginGuard
from tenantry.service.settings import ServiceSettings
from tenantry.service.state import ServiceState, service_of
from tenantry.tenancy.logs import get_logger
from tenantry.tenantry import Tenantry

log = get_logger(__name__)

#: Request bodies are small JSON documents (a payload, tenant settings): a
#: larger body is refused (413) before it is read into memory.
MAX_BODY_BYTES = 1 << 20

#: Seconds the embedded worker gets beyond its grace period to drain, then after
#: a hard stop, before shutdown goes on without it.
_STOP_MARGIN = 15.0
_HARD_STOP_WAIT = 10.0

INSECURE_BANNER = (
    "INSECURE DEV MODE: tenantry serve runs WITHOUT an admin token. Anyone who can reach "
    "this port can read, change and delete every tenant. Never do this outside your own machine."
)


def _is_dashboard(request: Request) -> bool:
    return request.url.path.startswith("/dashboard")


def _json_error(
    status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    all_headers = dict(headers or {})
    if status == 401:
        all_headers.setdefault("WWW-Authenticate", "Bearer")
    return JSONResponse(error_body(code, message, **extra), status_code=status, headers=all_headers)


async def _tenantry_error(request: Request, exc: Exception) -> Response:
    if _is_dashboard(request):
        return await dashboard.dashboard_error(request, exc)
    status, code = status_for(exc) or (500, "internal_error")
    if status >= 500 and code == "internal_error":
        log.error("internal error on %s", request.url.path, exc_info=exc)
        return _json_error(status, code, "internal error (see the service log)")
    return _json_error(status, code, str(exc))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    details = [
        {
            "loc": [str(part) for part in err.get("loc", ())],
            "message": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        }
        for err in exc.errors()
    ]
    first = details[0] if details else {"loc": [], "message": "invalid request"}
    where = ".".join(first["loc"])
    message = f"{where}: {first['message']}" if where else str(first["message"])
    if _is_dashboard(request):
        return await dashboard.dashboard_error(request, TenantryError(message))
    return _json_error(422, "invalid_request", message, details=details)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _json_error(exc.status_code, code, str(exc.detail), headers=exc.headers)


async def _database_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, OperationalError):
        log.warning("database unavailable on %s: %s", request.url.path, type(exc.orig).__name__)
        return _json_error(503, "database_unavailable", "a database is unreachable; try again")
    log.error("database error on %s", request.url.path, exc_info=exc)
    return _json_error(500, "internal_error", "internal error (see the service log)")


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s", request.url.path, exc_info=exc)
    return _json_error(500, "internal_error", "internal error (see the service log)")


class BodyLimit:
    """Refuse request bodies over *max_bytes* with a JSON 413, before the app reads them.

    The body is read up to the limit and handed to the app in one message, so a
    chunked upload without ``Content-Length`` is refused the same way (the
    admin API's bodies are small JSON documents, so buffering them costs
    nothing).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = _json_error(
            413, "payload_too_large", f"request bodies are limited to {self.max_bytes} bytes"
        )
        await response(scope, receive, send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


def create_app(
    tenantry: Tenantry,
    registry: JobRegistry | None = None,
    *,
    settings: ServiceSettings,
    run_worker: bool = True,
    worker_options: WorkerOptions | None = None,
) -> FastAPI:
    """The service for *tenantry*; with a *registry*, jobs can be enqueued and run.

    ``run_worker=False`` serves the API and dashboard only (workers run
    elsewhere). ``worker_options`` configure the embedded
    :class:`~tenantry.Worker` (default: :class:`~tenantry.WorkerOptions`'s
    defaults). The caller keeps ownership of *tenantry* and closes it after the
    app has stopped.
    """
    queue = Queue(tenantry, registry or JobRegistry())
    metrics = ServiceMetrics(
        kinds=registry.kinds if registry is not None else (),
        top_tenants=settings.top_tenants,
        top_kinds=settings.top_kinds,
    )
    state = ServiceState(
        tenantry=tenantry,
        queue=queue,
        registry=registry,
        settings=settings,
        auth=Auth(settings),
        metrics=metrics,
        monitor=Monitor(
            queue.admin,
            interval=settings.sample_interval,
            keep=settings.samples_kept,
            window=settings.stats_window,
        ),
        run_worker=run_worker,
        worker_options=worker_options if worker_options is not None else WorkerOptions(),
    )
    if settings.open_admin:
        log.warning(INSECURE_BANNER)

    app = FastAPI(
        title="tenantry service",
        version=__version__,
        description=(
            "Admin API of tenantry: tenants, API keys, jobs and queue statistics. "
            "Every /api route needs the admin token as `Authorization: Bearer <token>`."
        ),
        lifespan=_lifespan,
        docs_url=None,  # served by _add_docs, from local files
        redoc_url=None,
    )
    app.state.service = state
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    # Added last, so it runs first: a refused request is not even read.
    app.add_middleware(OriginGuard, open_admin=settings.open_admin)
    app.include_router(api.router)
    app.include_router(dashboard.router)
    _add_docs(app)

    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse("/dashboard/", status_code=303)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        """Liveness: answers without touching a database or needing a token."""
        return PlainTextResponse("ok")

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint(request: Request) -> Response:
        svc = service_of(request)
        if not svc.auth.may_scrape(request.headers.get("authorization")):
            return _json_error(401, "unauthorized", "/metrics needs the metrics or admin token")
        stats = await svc.monitor.current()
        tenants = await run_in_threadpool(svc.tenantry.list_tenants)
        body = await run_in_threadpool(svc.metrics.render, stats, tenants)
        return Response(body, media_type=CONTENT_TYPE)

    app.add_exception_handler(dashboard.LoginRequired, dashboard.dashboard_error)
    app.add_exception_handler(dashboard.CsrfError, dashboard.dashboard_error)
    app.add_exception_handler(TenantryError, _tenantry_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(Exception, _unexpected)
    return app


#: Where the Swagger UI files are served.
DOCS_ASSETS = "/docs/assets"


def _add_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI served from files of the installed ``fastapi-offline`` package.

    FastAPI's default page loads Swagger UI from a CDN, so it is blank on a
    network without Internet access, where such a service often runs. The
    files come from a package instead, served beside the page, and Swagger
    UI's online validator (a request to validator.swagger.io) is switched off,
    so the page needs nothing but this service. ``fastapi-offline`` ships
    Swagger UI 5, the first to read OpenAPI 3.1, which FastAPI writes
    (``swagger-ui-bundle`` ships Swagger UI 4, which refuses the schema). Only
    its static files are used. Swagger UI is kept rather than ReDoc because it
    sends requests: an operator authorizes once with the admin token and tries
    the API from the page. Like ``/openapi.json``, the page needs no token: it
    describes the API and holds no data, and every request made from it needs
    the admin token.
    """
    assets = StaticFiles(directory=str(files("fastapi_offline") / "static"))
    app.mount(DOCS_ASSETS, assets, name="docs-assets")
    redirect = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> Response:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            oauth2_redirect_url=f"{root}{redirect}",
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(redirect, include_in_schema=False)
    async def docs_oauth2_redirect() -> Response:
        return get_swagger_ui_oauth2_redirect_html()


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Create the queue tables, then run the sampler and the embedded worker until shutdown."""
    state: ServiceState = app.state.service
    await asyncio.to_thread(state.queue.setup)
    monitor_task = asyncio.create_task(state.monitor.run(), name="tenantry-monitor")
    if state.run_worker and state.registry is not None:
        await _start_worker(state)
    elif state.run_worker:
        log.info("no job registry given (--app): the service runs no worker")
    try:
        yield
    finally:
        await _stop_worker(state)
        monitor_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor_task


async def _start_worker(state: ServiceState) -> None:
    assert state.registry is not None
    worker = Worker(state.tenantry, state.registry, state.worker_options, observer=state.metrics)
    state.worker = worker
    task = asyncio.create_task(worker.run(), name="tenantry-embedded-worker")
    state.worker_task = task
    started = asyncio.create_task(worker.wait_started())
    await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():  # it failed while starting: the service must not pretend to run jobs
        started.cancel()
        task.result()
    log.info("embedded worker %s running", worker.worker_id)


async def _stop_worker(state: ServiceState) -> None:
    worker, task = state.worker, state.worker_task
    if worker is None or task is None:
        return
    worker.stop()
    try:
        await asyncio.wait_for(
            asyncio.shield(task), state.worker_options.shutdown_grace + _STOP_MARGIN
        )
    except TimeoutError:
        log.error("embedded worker did not stop in time; stopping it hard")
        worker.stop(hard=True)
        await _wait_after_hard_stop(task)
    except Exception:
        log.exception("embedded worker failed")


async def _wait_after_hard_stop(task: asyncio.Task[Any]) -> None:
    """Give a hard-stopped worker a last moment; whatever happens, shutdown goes on.

    The service must still close, so nothing is raised from here, but each way
    the worker can end is logged: a silent shutdown would hide a stuck handler.
    """
    try:
        await asyncio.wait_for(task, _HARD_STOP_WAIT)
    except TimeoutError:
        log.error("embedded worker did not stop after a hard stop; cancelled it")
    except asyncio.CancelledError:
        log.warning("embedded worker was cancelled while stopping hard")
    except Exception:
        log.exception("embedded worker failed while stopping hard")

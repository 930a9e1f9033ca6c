"""The dashboard: server-rendered pages under ``/dashboard``.

No front-end build and no third-party script: Jinja2 templates (autoescaped),
plain HTML forms for actions and one small inline script that polls the
overview's HTML fragment every couple of seconds.

Security:

* **Login.** The admin token is typed into the login form once; the browser
  then holds an HttpOnly, SameSite=Strict session cookie signed with an HMAC
  (:mod:`tenantry.service.auth`), never the token itself.
* **CSRF.** Every POST form carries a token bound to the session, checked with
  ``hmac.compare_digest``. SameSite=Strict alone would leave older browsers
  exposed.
* **Headers.** A Content-Security-Policy with a per-response nonce (no other
  script can run), ``frame-ancestors 'none'`` against click-jacking of the
  retry buttons, ``no-store`` caching and no referrer.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Path, Request
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse, Response

from tenantry.errors import AuthenticationError, TenantryError
from tenantry.queue import Job, JobState
from tenantry.queue.job import utcnow
from tenantry.service import timefmt
from tenantry.service.auth import SESSION_COOKIE, DashboardSession
from tenantry.service.chart import throughput_svg
from tenantry.service.dashboard_query import (
    RANGES,
    int_param,
    list_tenants,
    notice_count,
    range_param,
    state_param,
    text_param,
)
from tenantry.service.errors import status_for
from tenantry.service.state import ServiceState, service_of
from tenantry.tenancy.catalog import Tenant
from tenantry.tenancy.ids import validate_tenant_id

JobId = Annotated[int, Path(ge=1, le=2**63 - 1)]
PAGE_SIZE = 50
TENANT_ROWS = 100
#: Job lists read ``page x PAGE_SIZE`` rows from each jobs table, so they stop here.
MAX_JOB_PAGE = 1000
#: The overview pages through the catalog in memory: 100,000 pages is far beyond any catalog.
MAX_TENANT_PAGE = 100_000
MAX_FORM_BYTES = 16 * 1024

NOTICES: dict[str, str] = {
    "retried": "Job {n} was requeued.",
    "cancelled": "Job {n} was cancelled.",
    "retried_dead": "{n} dead job(s) were requeued.",
    "suspended": "The tenant was suspended.",
    "resumed": "The tenant was resumed.",
    "logged_out": "You are logged out.",
}

_env = Environment(
    loader=PackageLoader("tenantry.service", "templates"),
    autoescape=select_autoescape(["html"], default=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


_env.filters["age"] = timefmt.age
_env.filters["when"] = timefmt.when
_env.filters["pretty_json"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)


class LoginRequired(AuthenticationError):
    """The dashboard page needs a logged-in session (the browser is sent to the login form)."""

    def __init__(self, next_path: str, *, fragment: bool = False) -> None:
        super().__init__()
        self.next_path = next_path
        self.fragment = fragment


class CsrfError(AuthenticationError):
    """The form's CSRF token is missing or does not belong to this session."""


def safe_next(value: str | None) -> str:
    """A local dashboard path to go back to; anything else becomes the overview."""
    if (
        not value
        or not value.startswith("/dashboard")
        or "//" in value
        or "\\" in value
        or any(ord(c) < 0x20 for c in value)
        or len(value) > 500
    ):
        return "/dashboard/"
    return value


def _here(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def session_of(request: Request, *, fragment: bool = False) -> DashboardSession:
    svc = service_of(request)
    found = svc.auth.session(request.cookies.get(SESSION_COOKIE))
    if found is None:
        raise LoginRequired(_here(request), fragment=fragment)
    return found


def render(
    request: Request,
    template: str,
    *,
    session: DashboardSession | None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    svc = service_of(request)
    nonce = secrets.token_urlsafe(16)
    notice = None
    code = request.query_params.get("notice")
    if code in NOTICES:
        count = notice_count(request.query_params)
        notice = NOTICES[code].format(n="" if count is None else count)
    html = _env.get_template(template).render(
        request_path=request.url.path,
        nonce=nonce,
        session=session,
        csrf=svc.auth.csrf_token(session) if session is not None else "",
        insecure=svc.settings.open_admin,
        notice=notice,
        **context,
    )
    return HTMLResponse(html, status_code=status, headers=security_headers(nonce))


def security_headers(nonce: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'"
        ),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        # Not "no-referrer": under it a browser sends ``Origin: null`` with the
        # page's own form POSTs, which OriginGuard must refuse as cross-site.
        # "same-origin" still sends nothing to other sites.
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }


async def read_form(request: Request) -> dict[str, str]:
    """A urlencoded form body (first value of each field); oversized bodies are refused."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise TenantryError("form too large")
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items()}


async def checked_form(request: Request) -> tuple[DashboardSession, dict[str, str]]:
    """The session and form of a dashboard POST whose CSRF token is right."""
    session = session_of(request)
    form = await read_form(request)
    if not service_of(request).auth.csrf_ok(session, form.get("csrf")):
        raise CsrfError()
    return session, form


def set_session_cookie(request: Request, response: Response) -> None:
    svc = service_of(request)
    response.set_cookie(
        SESSION_COOKIE,
        svc.auth.new_session(),
        max_age=int(svc.settings.session_max_age),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


router = APIRouter(prefix="/dashboard", include_in_schema=False)


# -- login ---------------------------------------------------------------------------------
@router.get("/login")
async def login_form(request: Request) -> Response:
    svc = service_of(request)
    target = safe_next(request.query_params.get("next"))
    if svc.auth.session(request.cookies.get(SESSION_COOKIE)) is not None:
        return RedirectResponse(target, status_code=303)
    if svc.settings.open_admin:  # --insecure-dev: no token to ask for
        response = RedirectResponse(target, status_code=303)
        set_session_cookie(request, response)
        return response
    return render(request, "login.html", session=None, next=target, error=None)


@router.post("/login")
async def login(request: Request) -> Response:
    svc = service_of(request)
    form = await read_form(request)
    target = safe_next(form.get("next"))
    if not svc.auth.login(form.get("token", "")):
        return render(
            request,
            "login.html",
            session=None,
            status=401,
            next=target,
            error="That is not the admin token.",
        )
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(request, response)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    await checked_form(request)
    response = RedirectResponse("/dashboard/login?notice=logged_out", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


# -- overview ------------------------------------------------------------------------------
def _overview_params(params: Mapping[str, str]) -> dict[str, Any]:
    return {
        "search": text_param(params, "q"),
        "page": int_param(params, "page", default=1, high=MAX_TENANT_PAGE),
        "range": range_param(params),
    }


async def _live_context(svc: ServiceState, params: Mapping[str, str]) -> dict[str, Any]:
    wanted = _overview_params(params)
    stats = await svc.monitor.current()
    tenants = await run_in_threadpool(svc.tenantry.list_tenants)
    listing = list_tenants(
        tenants,
        stats.tenants,
        search=wanted["search"],
        page=wanted["page"],
        per_page=TENANT_ROWS,
        window_seconds=stats.window_seconds,
    )
    samples = list(svc.monitor.samples)
    span = RANGES[wanted["range"]][0]
    if span is None:  # the recent samples, as many as the sampler keeps
        recent = svc.monitor.interval * (svc.monitor.samples.maxlen or 2)
        chart = throughput_svg(samples, span=recent, now=utcnow())
    else:  # the longer ranges draw from the rolled-up day
        chart = throughput_svg(list(svc.monitor.history), span=span, now=utcnow())
    defaults: dict[str, Any] = {"q": None, "page": 1, "range": "recent"}

    def link(**changes: Any) -> str:
        """The overview's query string with *changes*; parameters at their default left out."""
        merged = {"q": wanted["search"], "page": listing.page, "range": wanted["range"]}
        merged.update(changes)
        return urlencode({k: v for k, v in merged.items() if v is not None and v != defaults[k]})

    return {
        "stats": stats,
        "total": stats.total(),
        "listing": listing,
        "rows": listing.rows,
        "search": wanted["search"] or "",
        "range": wanted["range"],
        "ranges": RANGES,
        "link": link,
        "tenant_count": len(tenants),
        "chart": chart,
        "last_sample": samples[-1] if samples else None,
        "seq": svc.monitor.seq,
        "monitor_error": svc.monitor.last_error,
        "worker": svc.worker,
    }


@router.get("/")
async def overview(request: Request) -> Response:
    session = session_of(request)
    svc = service_of(request)
    context = await _live_context(svc, request.query_params)
    return render(
        request,
        "overview.html",
        session=session,
        interval_ms=int(svc.settings.sample_interval * 1000),
        **context,
    )


@router.get("/live")
async def live(request: Request) -> Response:
    """The overview's live part alone: what the page's script swaps in every poll."""
    session = session_of(request, fragment=True)
    context = await _live_context(service_of(request), request.query_params)
    return render(request, "_live.html", session=session, **context)


# -- dead letters --------------------------------------------------------------------------
def _page_args(request: Request) -> int:
    return int_param(request.query_params, "page", default=1, high=MAX_JOB_PAGE)


def _tenant_param(request: Request) -> str | None:
    value = request.query_params.get("tenant") or None
    return None if value is None else validate_tenant_id(value)


@router.get("/dead")
async def dead_letters(request: Request) -> Response:
    session = session_of(request)
    svc = service_of(request)
    tenant_id = _tenant_param(request)
    page = _page_args(request)

    def load() -> tuple[list[Job], list[Tenant]]:
        jobs = svc.queue.admin.list_jobs(
            tenant_id=tenant_id,
            state=JobState.DEAD,
            limit=PAGE_SIZE + 1,
            offset=(page - 1) * PAGE_SIZE,
        )
        return jobs, svc.tenantry.list_tenants()

    jobs, tenants = await run_in_threadpool(load)
    return render(
        request,
        "dead.html",
        session=session,
        jobs=jobs[:PAGE_SIZE],
        more=len(jobs) > PAGE_SIZE,
        page=page,
        tenant_id=tenant_id,
        tenants=tenants,
        here=_here(request),
        query=lambda **kw: urlencode({k: v for k, v in kw.items() if v}),
    )


# -- tenants and jobs ------------------------------------------------------------------------
@router.get("/tenants/{tenant_id}")
async def tenant_page(request: Request, tenant_id: str) -> Response:
    session = session_of(request)
    svc = service_of(request)
    validate_tenant_id(tenant_id)
    state_filter = state_param(request.query_params)
    kind_filter = text_param(request.query_params, "kind")
    page = _page_args(request)

    def load() -> dict[str, Any]:
        tenant = svc.tenantry.get_tenant(tenant_id)
        stats = svc.queue.admin.stats(tenant_id=tenant_id).tenants[tenant_id]
        jobs = svc.queue.admin.list_jobs(
            tenant_id=tenant_id,
            state=state_filter,
            kind=kind_filter,
            limit=PAGE_SIZE + 1,
            offset=(page - 1) * PAGE_SIZE,
        )
        keys = svc.tenantry.api_keys.list(tenant_id)
        counts = svc.queue.admin.count_jobs(tenant_id=tenant_id)
        return {"tenant": tenant, "tstats": stats, "jobs": jobs, "keys": keys, "counts": counts}

    data = await run_in_threadpool(load)
    jobs = data.pop("jobs")
    return render(
        request,
        "tenant.html",
        session=session,
        jobs=jobs[:PAGE_SIZE],
        more=len(jobs) > PAGE_SIZE,
        page=page,
        state_filter=state_filter,
        kind_filter=kind_filter,
        kinds=sorted(
            {*(svc.registry.kinds if svc.registry else ()), *(k for _, k in data["tstats"].by_kind)}
        ),
        states=[s.value for s in JobState],
        here=_here(request),
        query=lambda **kw: urlencode({k: v for k, v in kw.items() if v}),
        **data,
    )


@router.get("/tenants/{tenant_id}/jobs/{job_id}")
async def job_page(request: Request, tenant_id: str, job_id: JobId) -> Response:
    session = session_of(request)
    svc = service_of(request)
    validate_tenant_id(tenant_id)
    job = await run_in_threadpool(svc.queue.admin.get_job, tenant_id, job_id)
    return render(request, "job.html", session=session, job=job, here=_here(request))


# -- actions ---------------------------------------------------------------------------------
def _done(form: dict[str, str], notice: str, n: int | None = None) -> RedirectResponse:
    target = safe_next(form.get("next"))
    query = urlencode({"notice": notice, **({"n": n} if n is not None else {})})
    sep = "&" if "?" in target else "?"
    return RedirectResponse(f"{target}{sep}{query}", status_code=303)


async def _act(
    request: Request, action: Callable[[ServiceState], Any], notice: str, n: int | None = None
) -> Response:
    _session, form = await checked_form(request)
    result = await run_in_threadpool(action, service_of(request))
    return _done(form, notice, result if isinstance(result, int) and n is None else n)


@router.post("/tenants/{tenant_id}/jobs/{job_id}/retry")
async def retry_job(request: Request, tenant_id: str, job_id: JobId) -> Response:
    validate_tenant_id(tenant_id)
    return await _act(
        request, lambda s: s.queue.admin.retry_job(tenant_id, job_id), "retried", job_id
    )


@router.post("/tenants/{tenant_id}/jobs/{job_id}/cancel")
async def cancel_job(request: Request, tenant_id: str, job_id: JobId) -> Response:
    validate_tenant_id(tenant_id)
    return await _act(
        request, lambda s: s.queue.admin.cancel_job(tenant_id, job_id), "cancelled", job_id
    )


@router.post("/tenants/{tenant_id}/retry-dead")
async def retry_dead(request: Request, tenant_id: str) -> Response:
    validate_tenant_id(tenant_id)
    return await _act(request, lambda s: s.queue.admin.retry_dead(tenant_id), "retried_dead")


@router.post("/tenants/{tenant_id}/suspend")
async def suspend(request: Request, tenant_id: str) -> Response:
    validate_tenant_id(tenant_id)
    return await _act(request, lambda s: s.tenantry.suspend_tenant(tenant_id), "suspended")


@router.post("/tenants/{tenant_id}/resume")
async def resume(request: Request, tenant_id: str) -> Response:
    validate_tenant_id(tenant_id)
    return await _act(request, lambda s: s.tenantry.resume_tenant(tenant_id), "resumed")


# -- errors ------------------------------------------------------------------------------------
async def dashboard_error(request: Request, exc: Exception) -> Response:
    """Errors on dashboard pages: the login redirect, or an HTML error page."""
    if isinstance(exc, LoginRequired):
        if exc.fragment:
            return Response("login required", status_code=401, media_type="text/plain")
        target = "/dashboard/login?" + urlencode({"next": safe_next(exc.next_path)})
        return RedirectResponse(target, status_code=303)
    if isinstance(exc, CsrfError):
        status, message = 403, "The form has expired or did not come from this dashboard."
    else:
        found = status_for(exc)
        status = found[0] if found else 500
        message = str(exc) if found and status < 500 else "Internal error (see the service log)."
    svc = service_of(request)
    session = svc.auth.session(request.cookies.get(SESSION_COOKIE))
    return render(
        request, "error.html", session=session, status=status, message=message, code=status
    )


DashboardHandler = Callable[[Request, Exception], Awaitable[Response]]

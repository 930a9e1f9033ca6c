"""Refuse requests that another web page makes the browser send to the service.

A browser lets any page send requests to any address, including
``127.0.0.1``: a form on another site can POST to the admin API, and a page
whose DNS name is later made to resolve to ``127.0.0.1`` (DNS rebinding) can
even read the answers, because to the browser it is talking to its own origin.
Without an admin token (``--insecure-dev``) nothing else stands in the way, so
:class:`OriginGuard` then

* refuses every request whose ``Host`` is not a loopback name (``localhost``,
  ``127.0.0.1``, ``[::1]``, any port): a rebound name arrives in ``Host``, so
  its pages get nothing, not even a GET;
* requires every state-changing request (POST, PUT, PATCH, DELETE) to carry an
  ``Origin`` (or, without one, a ``Referer``) of the service's own origin.
  Browsers always send ``Origin`` on such requests, so a request without either
  header did not come from a page of this service.

With an admin token the token (or the dashboard's session cookie and CSRF
token) is the defence; the guard adds a cheap second one: a state-changing
request whose ``Origin`` names another host is refused. Requests without an
``Origin`` (curl, scripts, API clients) pass as before, and ports are not
compared, so a TLS-terminating proxy in front of the service does not need to
preserve them. ``X-Forwarded-Host`` counts as the service's host too, for a
proxy that rewrites ``Host``; a cross-site page cannot set that header
without a CORS preflight, which the service never grants.

The guard answers with the admin API's JSON error shape, or a short HTML page
under ``/dashboard``.
"""

from __future__ import annotations

import html
import ipaddress
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from tenantry.service.errors import error_body

#: Methods that change state; GET, HEAD and OPTIONS only read.
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def is_loopback_name(hostname: str) -> bool:
    """Whether *hostname* (no port, IPv6 without brackets) always means this machine.

    Only ``localhost`` and loopback IP literals: any other name could be made
    to resolve to ``127.0.0.1`` by whoever controls its DNS.
    """
    name = hostname.lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _split_host(value: str, scheme: str) -> tuple[str, int] | None:
    """``(hostname, port)`` of a ``Host`` header value; ``None`` if it is malformed."""
    try:
        parts = urlsplit(f"//{value.strip()}")
        hostname, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not hostname or parts.path or parts.query or parts.fragment or parts.username:
        return None
    return hostname, port if port is not None else _DEFAULT_PORTS.get(scheme, 80)


def _split_origin(value: str) -> tuple[str, str, int] | None:
    """``(scheme, hostname, port)`` of an ``Origin`` or ``Referer`` value, else ``None``.

    ``Origin: null`` (sent by sandboxed frames and ``file:`` pages) and any
    value that is not an http(s) URL give ``None``: no known origin.
    """
    try:
        parts = urlsplit(value.strip())
        hostname, port = parts.hostname, parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not hostname:
        return None
    return scheme, hostname, port if port is not None else _DEFAULT_PORTS[scheme]


class OriginGuard:
    """ASGI middleware: the Host and Origin checks described in the module docstring.

    *open_admin* selects the strict rules (no admin token configured).
    """

    def __init__(self, app: ASGIApp, *, open_admin: bool) -> None:
        self.app = app
        self.open_admin = open_admin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        await _refuse(scope, refusal)(scope, receive, send)

    def refusal(self, scope: Scope) -> str | None:
        """Why the request is refused (one sentence), or ``None`` to let it through."""
        headers = Headers(scope=scope)
        scheme = str(scope.get("scheme", "http"))
        host = _split_host(headers.get("host", ""), scheme)
        unsafe = str(scope.get("method", "GET")).upper() in UNSAFE_METHODS
        if self.open_admin:
            return self._open_refusal(headers, host, unsafe)
        origin = headers.get("origin")
        if not unsafe or origin is None:
            return None
        parsed = _split_origin(origin)
        own = {host[0]} if host is not None else set()
        forwarded = headers.get("x-forwarded-host")
        if forwarded:
            found = _split_host(forwarded.split(",")[0], scheme)
            if found is not None:
                own.add(found[0])
        if parsed is not None and parsed[1] in own:
            return None
        return (
            f"cross-site request refused: Origin {origin!r} is not this service's own host; "
            "state-changing requests from a browser must come from the service's own pages"
        )

    @staticmethod
    def _open_refusal(headers: Headers, host: tuple[str, int] | None, unsafe: bool) -> str | None:
        if host is None or not is_loopback_name(host[0]):
            return (
                f"Host {headers.get('host', '')!r} refused: without an admin token "
                "(--insecure-dev) the service answers only to localhost, 127.0.0.1 or [::1]"
            )
        if not unsafe:
            return None
        origin = headers.get("origin")
        source, value = ("Origin", origin) if origin is not None else ("Referer", None)
        if value is None:
            value = headers.get("referer")
        if value is None:
            return (
                "request refused: without an admin token (--insecure-dev) a state-changing "
                "request needs an Origin or Referer header of this service's own address"
            )
        parsed = _split_origin(value)
        if parsed is None or (parsed[1], parsed[2]) != host:
            return (
                f"cross-site request refused: {source} {value!r} is not this service's own "
                "address; without an admin token (--insecure-dev) state-changing requests "
                "must come from the service's own pages"
            )
        return None


def _refuse(scope: Scope, message: str) -> Response:
    """A 403 in the shape the path's clients read: HTML for the dashboard, JSON elsewhere."""
    if str(scope.get("path", "")).startswith("/dashboard"):
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>Refused</title></head>"
            f"<body><h1>403 Forbidden</h1><p>{html.escape(message)}</p></body></html>"
        )
        return HTMLResponse(
            page,
            status_code=403,
            headers={
                "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
                "X-Frame-Options": "DENY",
                "Cache-Control": "no-store",
            },
        )
    return JSONResponse(error_body("forbidden", message), status_code=403)

"""Admin token checks, dashboard session cookies and CSRF tokens.

The admin token is the only credential. API clients send it on every request
(``Authorization: Bearer ...``); a browser sends it once, to the login form,
and then carries a session cookie instead, so the token never sits in the
browser. The cookie and the CSRF tokens are HMACs under a key derived from the
server secret *and* the admin token: rotating the token ends every session.
Every comparison of secret material uses :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from tenantry.service.settings import ServiceSettings

SESSION_COOKIE = "tenantry_session"


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else ``None``."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


@dataclass(frozen=True)
class DashboardSession:
    """A valid dashboard session: its random id (the CSRF tokens are bound to it)."""

    sid: str
    expires: int


class Auth:
    """Checks tokens, issues and verifies session cookies and CSRF tokens."""

    def __init__(self, settings: ServiceSettings, *, clock: Callable[[], float] = time.time):
        self.settings = settings
        self._clock = clock
        secret = settings.session_secret or secrets.token_bytes(32)
        material = b"tenantry-session-v1|" + (settings.admin_token or "").encode()
        self._key = hmac.new(secret, material, hashlib.sha256).digest()

    # -- bearer tokens ----------------------------------------------------------
    def is_admin(self, authorization: str | None) -> bool:
        """Whether the request may use the admin API."""
        if self.settings.open_admin:
            return True
        token = bearer_token(authorization)
        return token is not None and _same(token, self.settings.admin_token or "")

    def may_scrape(self, authorization: str | None) -> bool:
        """Whether the request may read ``/metrics`` (admin or metrics token, or public)."""
        if self.settings.metrics_public or self.is_admin(authorization):
            return True
        token = bearer_token(authorization)
        expected = self.settings.metrics_token
        return token is not None and expected is not None and _same(token, expected)

    def login(self, token: str) -> bool:
        """Whether *token*, typed into the login form, is the admin token."""
        if self.settings.open_admin:
            return True
        return _same(token, self.settings.admin_token or "")

    # -- session cookies ----------------------------------------------------------
    def _sign(self, purpose: str, value: str) -> str:
        return hmac.new(self._key, f"{purpose}|{value}".encode(), hashlib.sha256).hexdigest()

    def new_session(self) -> str:
        """A cookie value: ``<session id>.<expiry>.<signature>``."""
        sid = secrets.token_urlsafe(18)
        expires = int(self._clock() + self.settings.session_max_age)
        payload = f"{sid}.{expires}"
        return f"{payload}.{self._sign('session', payload)}"

    def session(self, cookie: str | None) -> DashboardSession | None:
        """The session of a cookie value, or ``None`` if it is missing, forged or expired."""
        if not cookie or len(cookie) > 200:
            return None
        parts = cookie.split(".")
        if len(parts) != 3:
            return None
        sid, expires_text, signature = parts
        if not _same(signature, self._sign("session", f"{sid}.{expires_text}")):
            return None
        try:
            expires = int(expires_text)
        except ValueError:
            return None
        if expires <= self._clock():
            return None
        return DashboardSession(sid, expires)

    def csrf_token(self, session: DashboardSession) -> str:
        """The token every dashboard form of this session carries."""
        return self._sign("csrf", session.sid)

    def csrf_ok(self, session: DashboardSession, token: str | None) -> bool:
        return token is not None and _same(token, self.csrf_token(session))

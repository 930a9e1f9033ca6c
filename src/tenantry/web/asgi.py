"""ASGI types and a read-only view of a request's scope.

tenantry's web layer speaks plain ASGI so that it works under any framework
(Starlette, FastAPI, Litestar, a bare ASGI app) without depending on one. The
resolvers see a :class:`RequestInfo`, not the raw scope, so they can be tested
without a server and cannot change the scope by accident.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class RequestInfo:
    """The parts of a request that tenant resolution may look at.

    Header names are lower-cased and every value of a repeated header is kept:
    a resolver must see that a header was sent twice with different values
    rather than silently trusting the first (or last) one.
    """

    path: str
    headers: Mapping[str, tuple[str, ...]]

    @classmethod
    def from_scope(cls, scope: Scope) -> RequestInfo:
        collected: dict[str, list[str]] = {}
        for raw_name, raw_value in scope.get("headers", ()):
            # ASGI headers are bytes; HTTP field values are ISO-8859-1 by definition.
            name = bytes(raw_name).decode("latin-1").lower()
            collected.setdefault(name, []).append(bytes(raw_value).decode("latin-1"))
        return cls(
            path=str(scope.get("path", "")),
            headers={name: tuple(values) for name, values in collected.items()},
        )

    @classmethod
    def build(cls, path: str = "/", headers: Mapping[str, str] | None = None) -> RequestInfo:
        """A request from plain strings (for tests and non-ASGI callers)."""
        return cls(path, {k.lower(): (v,) for k, v in (headers or {}).items()})

    def header_values(self, name: str) -> tuple[str, ...]:
        return self.headers.get(name.lower(), ())

    @property
    def host(self) -> str | None:
        values = self.header_values("host")
        return values[0] if len(values) == 1 else None

    def bearer_tokens(self) -> tuple[str, ...]:
        """Tokens from every ``Authorization: Bearer ...`` header, stripped."""
        tokens = []
        for value in self.header_values("authorization"):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer":
                tokens.append(token.strip())
        return tuple(tokens)

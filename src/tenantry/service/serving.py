"""Running the service (and the demo's app) under uvicorn.

The listening socket is bound *before* uvicorn starts, so a caller knows the
real port (``--port 0`` picks a free one) and can print working URLs, and a
port that is taken is reported as one clear error instead of a uvicorn log.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on *host*:*port* (OSError if that is impossible)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket, as a browser on this machine would type it."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):  # noqa: S104 - naming the wildcard, not binding it
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def config(
    app: Any, *, log_level: str = "info", access_log: bool = True, own_logging: bool = True
) -> uvicorn.Config:
    """uvicorn's settings; ``own_logging=False`` leaves the process's logging alone.

    uvicorn normally installs its own log handlers (``dictConfig``), bound to
    the stderr of the moment: right for ``tenantry serve``, wrong for servers
    embedded in a process that has its own logging (the demo, tests).
    """
    return uvicorn.Config(
        app,
        lifespan="on",
        log_level=log_level,
        access_log=access_log,
        proxy_headers=False,
        server_header=False,
        log_config=uvicorn.config.LOGGING_CONFIG if own_logging else None,
    )


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its caller.

    uvicorn installs process-wide SIGINT/SIGTERM handlers per server; with two
    servers in one loop (the demo) the second would shadow the first. The
    caller stops both by setting ``should_exit``.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ServiceServer(uvicorn.Server):
    """uvicorn for ``tenantry serve``: SIGTERM/SIGINT stop it gracefully, then it returns.

    Plain uvicorn re-raises the signal after its graceful shutdown, so the
    process would die *by* SIGTERM; ``tenantry serve``, like ``tenantry
    worker``, exits 0 after a clean drain, and 1 when something failed.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

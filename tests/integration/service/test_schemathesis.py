"""Schemathesis against the service's OpenAPI schema: no input may cause a server error.

The real app runs under uvicorn in a thread (lifespan, thread pool and all),
on SQLite and on PostgreSQL (which refuses NUL characters, lone surrogates and
overlong values that SQLite would swallow). Every operation of the schema gets
valid ("positive") and invalid ("negative") generated requests, all with the
admin token; any 5xx fails the test with a curl command that reproduces it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from tenantry import Tenantry
from tenantry.service import ServiceSettings, create_app
from tenantry.service.serving import EmbeddedServer, bind, config, url_of
from tests.conftest import BACKENDS, TenantryFactory
from tests.integration.service.conftest import ADMIN_TOKEN, AUTH
from tests.integration.service.jobs import registry

EXAMPLES = 12


@contextmanager
def served(t: Tenantry) -> Iterator[str]:
    """The service for *t* under uvicorn in a thread; yields its base URL."""
    app = create_app(
        t,
        registry,
        settings=ServiceSettings(admin_token=ADMIN_TOKEN, sample_interval=5.0),
        run_worker=False,
    )
    sock = bind("127.0.0.1", 0)
    server = EmbeddedServer(config(app, log_level="warning", access_log=False, own_logging=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the service failed to start"
        assert time.monotonic() < deadline, "the service did not start in time"
        time.sleep(0.05)
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def _check_operation(operation: Any, mode: GenerationMode, base_url: str) -> int:
    calls = 0

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        nonlocal calls
        response = case.call(base_url=base_url, headers=dict(AUTH), timeout=30)
        calls += 1
        assert response.status_code < 500, (
            f"{response.status_code} for {case.as_curl_command()}\n{response.text[:1000]}"
        )
        if response.status_code >= 400 and response.status_code != 405:
            body = response.json()
            assert set(body) == {"error"}, body  # every refusal has the documented shape

    check()
    return calls


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_generated_request_causes_a_server_error(
    make_tenantry: TenantryFactory, backend: str
) -> None:
    t = make_tenantry(backend)
    t.create_tenant("acme")
    with served(t) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        results = list(schema.get_all_operations())
        operations = [r.ok() for r in results if isinstance(r, Ok)]
        assert len(operations) == len(results), "schemathesis could not read some operations"
        assert len(operations) >= 20
        calls = 0
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                calls += _check_operation(operation, mode, url)
    assert calls >= len(operations) * 2  # every operation was really exercised

"""The objects one service instance shares between its API, dashboard and metrics."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from tenantry.errors import NoJobRegistryError
from tenantry.queue import JobRegistry, Queue, Worker
from tenantry.queue.worker import WorkerOptions
from tenantry.service.auth import Auth
from tenantry.service.metrics import ServiceMetrics
from tenantry.service.monitor import Monitor
from tenantry.service.settings import ServiceSettings
from tenantry.tenantry import Tenantry


@dataclass
class ServiceState:
    """One service: its tenantry, queue, embedded worker (if any) and helpers.

    ``registry`` is the application's job registry, or ``None`` when the
    service was started without one: then nothing can be enqueued through it
    (kinds and payloads could not be checked) and no worker runs.
    """

    tenantry: Tenantry
    queue: Queue
    registry: JobRegistry | None
    settings: ServiceSettings
    auth: Auth
    metrics: ServiceMetrics
    monitor: Monitor
    run_worker: bool = True
    worker_options: WorkerOptions = field(default_factory=WorkerOptions)
    worker: Worker | None = None
    worker_task: asyncio.Task[Any] | None = None

    def require_registry(self) -> JobRegistry:
        if self.registry is None:
            raise NoJobRegistryError()
        return self.registry


def service_of(request: Request) -> ServiceState:
    """The :class:`ServiceState` of the app serving *request*."""
    state = request.app.state.service
    assert isinstance(state, ServiceState)
    return state

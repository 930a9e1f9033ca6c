"""The set-up that ``tenantry worker`` and ``tenantry serve`` share: both run a worker.

One copy, so the two commands cannot drift in how they load the application's
registry, what they log, which worker settings their flags mean, and how they
leave when a sync handler outlives the grace period.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from tenantry.cli.output import CliError
from tenantry.cli.state import import_from_cwd
from tenantry.queue import JobRegistry
from tenantry.queue.worker import Worker, WorkerOptions
from tenantry.tenancy.logs import get_logger
from tenantry.tenantry import import_object

log = get_logger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


# -- the options both commands take (each keeps its own help text) -----------------
def concurrency_option(help_text: str) -> Callable[[F], F]:
    return click.option(
        "--concurrency", "-c", default=10, show_default=True, type=click.IntRange(1), help=help_text
    )


def grace_option(help_text: str) -> Callable[[F], F]:
    return click.option(
        "--grace", default=30.0, show_default=True, type=click.FloatRange(0), help=help_text
    )


def poll_option(help_text: str) -> Callable[[F], F]:
    return click.option(
        "--poll", default=1.0, show_default=True, type=click.FloatRange(0.01), help=help_text
    )


def worker_options(
    *,
    concurrency: int,
    grace: float,
    poll: float,
    prefetch: int | None = None,
    max_prefetch: int | None = None,
    queues: Sequence[str] = (),
    stores: Sequence[str] = (),
    tenant_ids: Sequence[str] = (),
    lease: float = WorkerOptions.lease_seconds,
    fair: bool = True,
) -> WorkerOptions:
    """The flags as :class:`WorkerOptions`; an empty filter means "all", as the worker reads it."""
    return WorkerOptions(
        concurrency=concurrency,
        shutdown_grace=grace,
        poll_interval=poll,
        prefetch=prefetch,
        max_prefetch=max_prefetch,
        queues=tuple(queues) or None,
        stores=tuple(stores) or None,
        tenants=tuple(tenant_ids) or None,
        lease_seconds=lease,
        fair=fair,
        freeze_gc=True,  # this process belongs to the worker: see WorkerOptions.freeze_gc
    )


# -- before and after the run -------------------------------------------------------------
def load_registry(app_ref: str) -> JobRegistry:
    """The application's registry named by ``--app``, importable from the working directory."""
    import_from_cwd()
    registry = import_object(app_ref)
    if not isinstance(registry, JobRegistry):
        raise CliError(f"{app_ref} is not a tenantry JobRegistry")
    return registry


def log_activity() -> None:
    """Show INFO at least: a running worker's activity log is its main output."""
    logger = logging.getLogger("tenantry")
    if logger.level > logging.INFO:
        logger.setLevel(logging.INFO)


def leave_busy_threads_behind(worker: Worker | None) -> None:
    """Exit now if sync handlers outlived the grace period; return otherwise.

    Sync handlers past the grace period cannot be interrupted, and Python
    would wait for their threads at exit. Their jobs were already released
    (and their outcome is fenced out), so leave without them.
    """
    if worker is None or not worker.busy_threads:
        return
    log.warning(
        "%d sync handler thread(s) still running; their jobs were released. Exiting.",
        worker.busy_threads,
    )
    logging.shutdown()
    os._exit(0)

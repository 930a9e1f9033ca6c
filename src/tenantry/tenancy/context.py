"""The current tenant, carried in a :class:`contextvars.ContextVar`.

A ContextVar (not a thread-local) is what makes the tenant follow the *logical*
flow of work: asyncio tasks copy the context when they are created, so a task
started inside ``tenant_context("a")`` stays in tenant ``a`` even after the
parent moved on, and two concurrent requests never see each other's tenant.
Threads do not inherit context by default, hence :func:`bind_context` and
:class:`TenantThreadPoolExecutor`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from types import TracebackType
from typing import Any, ParamSpec, Protocol, TypeVar

from tenantry.errors import TenantNotSetError
from tenantry.tenancy.ids import validate_tenant_id

P = ParamSpec("P")
R = TypeVar("R")

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tenantry_current_tenant", default=None
)


class _HasTenantId(Protocol):
    @property
    def id(self) -> str: ...


TenantLike = str | _HasTenantId


def _tenant_id_of(tenant: TenantLike) -> str:
    return validate_tenant_id(tenant if isinstance(tenant, str) else tenant.id)


def current_tenant() -> str:
    """The id of the tenant set in this context; raises if there is none."""
    tenant_id = _current.get()
    if tenant_id is None:
        raise TenantNotSetError()
    return tenant_id


def current_tenant_or_none() -> str | None:
    """The current tenant id, or ``None``; for code that must branch on it (logging)."""
    return _current.get()


class tenant_context:
    """Set the current tenant for a ``with`` or ``async with`` block.

    The previous value is restored with the ContextVar token on exit, also when
    the block raises, so blocks nest and never leave a tenant behind.
    """

    __slots__ = ("_tenant_id", "_tokens")

    def __init__(self, tenant: TenantLike) -> None:
        self._tenant_id = _tenant_id_of(tenant)
        # A stack, so one instance can be re-entered (nested use of the same object).
        self._tokens: list[contextvars.Token[str | None]] = []

    @property
    def tenant_id(self) -> str:
        return self._tenant_id

    @classmethod
    def trusted(cls, tenant_id: str) -> tenant_context:
        """A context for an id tenantry read back from its own rows.

        Those ids were validated when they were written; the worker enters one
        context per job and skips validating it again.
        """
        self = cls.__new__(cls)
        self._tenant_id = tenant_id
        self._tokens = []
        return self

    def __enter__(self) -> str:
        self._tokens.append(_current.set(self._tenant_id))
        return self._tenant_id

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _current.reset(self._tokens.pop())

    async def __aenter__(self) -> str:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


@contextmanager
def no_tenant() -> Iterator[None]:
    """Run a block with no tenant set (for global work inside a tenant's request)."""
    token = _current.set(None)
    try:
        yield
    finally:
        _current.reset(token)


def bind_context(fn: Callable[P, R]) -> Callable[P, R]:
    """Return *fn* bound to a copy of the caller's context (tenant included).

    Use it for callbacks handed to code that runs them on other threads.
    """
    ctx = contextvars.copy_context()

    def bound(*args: P.args, **kwargs: P.kwargs) -> R:
        return ctx.run(fn, *args, **kwargs)

    return bound


class TenantThreadPoolExecutor(ThreadPoolExecutor):
    """A thread pool whose tasks run in the submitter's context.

    A plain ThreadPoolExecutor runs tasks in the worker thread's own (empty)
    context, so ``current_tenant()`` would raise there, or worse, see whatever
    an earlier task left in that thread. Each task here gets a fresh copy of
    the submitter's context instead.
    """

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        ctx = contextvars.copy_context()
        return super().submit(ctx.run, fn, *args, **kwargs)

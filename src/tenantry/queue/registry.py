"""Handlers: one per job kind, each with a typed payload.

Payload types may be pydantic models, dataclasses, TypedDicts or any type
pydantic's ``TypeAdapter`` understands. Payloads are validated when enqueued
(so a bad one never reaches the table) and again when run (the table may hold
rows written by an older version of the code, or by hand).
"""

from __future__ import annotations

import builtins
import inspect
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from tenantry.errors import ConfigError, PayloadValidationError, UnknownJobKind
from tenantry.queue.job import PAYLOAD_TEXT, Job
from tenantry.queue.retry import RetryPolicy

HandlerFn = Callable[..., Any]
_KIND_MAX = 200
# JSON's escape of the NUL character: ``\u0000`` after an odd run of
# backslashes. After an even run the backslashes are escaped ones and
# ``u0000`` is plain text (a payload holding a backslash then "u0000").
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
#: Why a NUL cannot be stored, in every error that refuses one.
NUL_REFUSED = "PostgreSQL cannot store the NUL character (\\u0000)"


@dataclass(frozen=True)
class Handler:
    kind: str
    fn: HandlerFn
    payload_type: Any
    is_async: bool
    transactional: bool
    timeout: float | None
    retry: RetryPolicy
    queue: str
    priority: int
    adapter: TypeAdapter[Any] = field(repr=False, compare=False)

    def validate(self, payload: Any) -> Any:
        """The payload as the handler's type; raises :class:`PayloadValidationError`."""
        try:
            if isinstance(payload, (str, bytes)) and self.payload_type not in (str, bytes):
                return self.adapter.validate_json(payload)
            # The adapter's validator itself: the same call as ``validate_python``
            # with its defaults, without its wrapper (a third of its cost).
            return self.adapter.validator.validate_python(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "payload"
            raise PayloadValidationError(
                f"invalid payload for {self.kind!r}: {where}: {first['msg']}"
                f" ({exc.error_count()} error(s))"
            ) from exc

    def validate_job(self, job: Job) -> Any:
        """``validate`` of a claimed job's payload, read back as the JSON it is stored as.

        In JSON mode pydantic reads back what enqueue wrote (``json_text``): a
        strict model's datetimes and bytes are strings in JSON, which Python
        mode refuses, so such jobs would go dead as poison. From the text
        (PostgreSQL claims keep it, ``PAYLOAD_TEXT``) parsing and validation
        are also one pass, where ``json.loads`` and then validating the objects
        walked the payload twice.
        """
        if self.payload_type in (str, bytes):
            return self.validate(job.payload)
        text = job.__dict__.get(PAYLOAD_TEXT)
        return self.validate(json.dumps(job.payload) if text is None else text)

    def json_text(self, value: Any) -> bytes:
        """A payload ``validate`` returned as JSON text (ASCII only): what every write stores.

        pydantic serializes straight to JSON, several times cheaper than
        ``json.dumps(adapter.dump_python(value, mode="json"))``, with the same
        value but for one case: a non-finite float, which pydantic writes as
        ``null`` (and its JSON-mode dump too, for one typed ``Any``). Text with a
        ``null`` in it is therefore checked for one, so such a payload is
        refused rather than stored altered. ASCII (non-ASCII characters
        escaped) reads the same in any client encoding.

        It is also where a payload PostgreSQL cannot store is refused, on
        every backend alike: a NUL character (jsonb has none), NaN or
        Infinity (JSON has none). Refused only by PostgreSQL it would be a
        database error mid-enqueue there but a stored job on SQLite, and a
        tenant could not be moved to a PostgreSQL store with its jobs.
        """
        # ``dump_json``'s serializer, called directly: half the cost of the wrapper.
        text = self.adapter.serializer.to_json(value, ensure_ascii=True, warnings=True)
        if b"null" in text and _has_non_finite(self.adapter.dump_python(value)):
            raise PayloadValidationError(
                f"invalid payload for {self.kind!r}: numbers must be finite "
                "(no NaN or Infinity: JSON has none)"
            )
        if b"\\u0000" in text and _NUL_ESCAPE.search(text):
            raise PayloadValidationError(
                f"invalid payload for {self.kind!r}: {NUL_REFUSED}; "
                "send binary data as base64 (for a pydantic model: ser_json_bytes='base64')"
            )
        return text


def _has_non_finite(value: Any) -> bool:
    """Whether a float NaN or Infinity is anywhere in *value* (``dump_python``'s output)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
    return False


def _payload_type_of(fn: HandlerFn) -> Any:
    params = list(inspect.signature(fn).parameters.values())
    if len(params) != 2:
        raise ConfigError(
            f"handler {fn.__qualname__} must take (ctx, payload); "
            f"it takes {len(params)} argument(s)"
        )
    annotation = params[1].annotation
    if annotation is inspect.Parameter.empty:
        raise ConfigError(
            f"handler {fn.__qualname__}: annotate the payload parameter or pass payload=..."
        )
    if not isinstance(annotation, str):
        return annotation
    # Only the payload's annotation matters; resolve it alone (the ctx or return
    # annotations of a handler defined in a function may not resolve globally).
    namespace = {**vars(builtins), **fn.__globals__, **inspect.getclosurevars(fn).nonlocals}
    try:
        return eval(annotation, namespace)  # noqa: S307 - a type annotation written by the app
    except Exception as exc:  # unresolvable annotation: say so plainly
        raise ConfigError(
            f"cannot resolve the payload annotation {annotation!r} of {fn.__qualname__}: {exc}; "
            "pass payload=... instead"
        ) from exc


class JobRegistry:
    """The application's job kinds and their handlers."""

    def __init__(self, *, default_retry: RetryPolicy | None = None) -> None:
        self._handlers: dict[str, Handler] = {}
        self.default_retry = default_retry or RetryPolicy()

    def handler(
        self,
        kind: str | None = None,
        *,
        payload: Any = None,
        queue: str = "default",
        priority: int = 0,
        max_attempts: int | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        transactional: bool = False,
    ) -> Callable[[HandlerFn], HandlerFn]:
        """Register ``fn(ctx, payload)`` for *kind* (default: the function's name).

        ``transactional=True``: the handler gets ``ctx.session`` inside a
        transaction that also marks the job completed, so its database writes
        happen exactly once.
        """

        def register(fn: HandlerFn) -> HandlerFn:
            name = kind or fn.__name__
            if not name or len(name) > _KIND_MAX:
                raise ConfigError(f"job kind must be 1-{_KIND_MAX} characters")
            if name in self._handlers:
                raise ConfigError(f"a handler for {name!r} is already registered")
            if timeout is not None and timeout <= 0:
                raise ConfigError("timeout must be positive")
            policy = retry or self.default_retry
            if max_attempts is not None:
                policy = RetryPolicy(
                    max_attempts=max_attempts,
                    base=policy.base,
                    factor=policy.factor,
                    max_delay=policy.max_delay,
                    jitter=policy.jitter,
                )
            ptype = payload if payload is not None else _payload_type_of(fn)
            self._handlers[name] = Handler(
                kind=name,
                fn=fn,
                payload_type=ptype,
                is_async=inspect.iscoroutinefunction(fn),
                transactional=transactional,
                timeout=timeout,
                retry=policy,
                queue=queue,
                priority=priority,
                adapter=TypeAdapter(ptype),
            )
            return fn

        return register

    def get(self, kind: str) -> Handler:
        try:
            return self._handlers[kind]
        except KeyError:
            raise UnknownJobKind(f"no handler registered for job kind {kind!r}") from None

    def __contains__(self, kind: object) -> bool:
        return kind in self._handlers

    @property
    def kinds(self) -> list[str]:
        return sorted(self._handlers)

    @property
    def queues(self) -> list[str]:
        return sorted({h.queue for h in self._handlers.values()})


__all__ = ["Handler", "JobRegistry"]

"""One-line configuration errors from pydantic's validation errors.

pydantic reports every problem with a location, a type and an English
sentence written for developers. An operator editing ``tenantry.toml`` needs
one line: the file, the key path as written in TOML (``stores.main.pool_size``,
``tenantry.catalog_cache_ttl``), the bad value (passwords masked) and what was
expected. :func:`config_error` writes that line as a :class:`ConfigError`, so
the CLI prints it as its single ``error:`` line and a program catches one
tenantry error class.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import ConfigDict, ValidationError
from pydantic_core import ErrorDetails

from tenantry.errors import ConfigError, StoreNotFoundError
from tenantry.tenancy.urls import mask_url

#: The model configuration of both configuration classes.
FROZEN_FORBID = ConfigDict(extra="forbid")

STORE_KEYS = frozenset(
    {
        "url",
        "admin_url",
        "rls_role",
        "max_tenant_engines",
        "pool_size",
        "database_prefix",
        "pooler",
    }
)
TOP_KEYS = frozenset(
    {
        "default_store",
        "catalog_store",
        "data_dir",
        "tenant_metadata",
        "global_metadata",
        "tenant_migrations",
        "global_migrations",
        "catalog_cache_ttl",
    }
)
_URL_KEYS = frozenset({"url", "admin_url"})
_EXPECTED = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
    "string_type": "expected a string",
    "bool_type": "expected true or false",
    "dict_type": "expected a table",
    "dataclass_type": "expected a table",
    "dataclass_exact_type": "expected a table",
    "model_type": "expected a table",
}
_UNKNOWN = frozenset({"unexpected_keyword_argument", "extra_forbidden"})
_MISSING = frozenset({"missing", "missing_argument", "missing_keyword_argument"})


def _path(loc: tuple[int | str, ...], *, in_file: bool, store: str | None) -> str:
    """The key as written in TOML (in a file) or as an argument name (in Python)."""
    parts = [str(p) for p in loc]
    if store is not None:  # a StoreConfig built directly
        parts = ["stores", store, *parts]
    if parts and parts[0] == "stores":
        if parts[-1] == "name" and len(parts) == 3:  # the name is the table's name
            parts = parts[:-1]
        return ".".join(parts)
    if in_file and parts:
        parts = ["tenantry", *parts]
    return ".".join(parts)


def _known_keys(path: str) -> str:
    keys = STORE_KEYS if path.startswith("stores.") else TOP_KEYS
    return ", ".join(sorted(keys))


def _shown(value: object, key: str) -> str:
    """The bad value as the line shows it: a URL masked, a long text cut."""
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str) and key in _URL_KEYS:
        value = mask_url(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _number(value: object) -> object:
    """``0`` rather than ``0.0`` for a bound pydantic keeps as a float."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def describe(error: ErrorDetails, *, in_file: bool, store: str | None = None) -> str:
    """One problem, without the source: ``stores.main.pool_size = 'abc': expected an integer``."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if not error["loc"] and "key" in ctx:  # a check across keys that blames one of them
        error = {**error, "loc": (ctx["key"],), "input": ctx["value"]}
    path = _path(error["loc"], in_file=in_file, store=store)
    key = str(error["loc"][-1]) if error["loc"] else ""
    if kind in _UNKNOWN:
        return f"{path}: unknown key (expected one of: {_known_keys(path)})"
    if kind in _MISSING:
        hint = " (every store needs a url)" if key == "url" else ""
        return f"{path}: required but not set{hint}"
    if kind == "value_error":
        expected = str(ctx.get("error", error["msg"]))
    elif kind == "greater_than_equal":
        expected = f"expected at least {_number(ctx['ge'])}"
    elif kind == "greater_than":
        expected = f"expected more than {_number(ctx['gt'])}"
    elif kind in _EXPECTED:
        expected = _EXPECTED[kind]
    else:
        expected = error["msg"][:1].lower() + error["msg"][1:]
    if not path:  # a check of the whole configuration (its message names the keys)
        return expected
    if key == "name" and path.count(".") == 1:  # stores.NAME: the value is in the path
        return f"{path}: {expected}"
    value = error["input"]
    if isinstance(value, Mapping | list):
        return f"{path} is {_shown(value, key)}: {expected}"
    return f"{path} = {_shown(value, key)}: {expected}"


def config_error(
    exc: ValidationError,
    *,
    source: str | None,
    in_file: bool,
    store: str | None = None,
    labels: Mapping[tuple[str, ...], str] | None = None,
    positional: tuple[str, ...] = (),
) -> ConfigError:
    """The :class:`ConfigError` for *exc*: its first problem on one line, the others counted.

    *labels* renames a location (a URL that came from an environment variable
    is reported under the variable's name).
    """
    errors = exc.errors(include_url=False)
    first = errors[0]
    if first["loc"] and isinstance(first["loc"][0], int) and positional:
        # An argument given by position: name it as if given by keyword.
        first = {**first, "loc": (positional[first["loc"][0]], *first["loc"][1:])}
    label = (labels or {}).get(tuple(str(p) for p in first["loc"]))
    if label is not None:
        shown = first["input"]
        shown = mask_url(shown) if isinstance(shown, str) else shown  # a URL, from the label
        first = {**first, "loc": (label,), "input": shown}
        line = describe(first, in_file=False)
    else:
        line = describe(first, in_file=in_file, store=store)
    if len(errors) > 1:
        more = len(errors) - 1
        line += f" (and {more} more problem{'s' if more > 1 else ''})"
    if source:
        line = f"{source}: {line}"
    cls = StoreNotFoundError if first["type"] == "store_not_found" else ConfigError
    return cls(line)


_C = TypeVar("_C", bound=type)


def raising_config_error(cls: _C) -> _C:
    """Make the constructor of a configuration class raise :class:`ConfigError`.

    Validation of nested values (the stores inside a ``TenantryConfig``) does
    not go through the constructor, so their errors keep their full key path
    until the outermost constructor or :func:`config_from_dict` reports them.
    """
    init: Callable[..., None] = cls.__init__  # type: ignore[misc]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as exc:
            name = kwargs.get("name", args[0] if args else None)
            fields = getattr(cls, "__dataclass_fields__", {})
            named = "name" in fields
            store = name if named and isinstance(name, str) else None
            raise config_error(
                exc, source=None, in_file=False, store=store, positional=tuple(fields)
            ) from None

    cls.__init__ = __init__  # type: ignore[misc]
    return cls

"""Store URLs: ``${NAME}`` secrets, masking, and the drivers tenantry connects with.

A URL in the configuration is a *template*: ``${NAME}`` stands for an
environment variable, expanded only when an engine is built. A value is
percent-encoded for the part of the URL it lands in, so a password such as
``Hunter2@Prod#Secret`` stays a password and does not turn into part of the
host name.

tenantry connects to PostgreSQL with psycopg 3 (sync and async) and to SQLite
with pysqlite / aiosqlite, whatever driver a URL names; a URL naming another
driver still works, and :func:`driver_note` says what is used instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from urllib.parse import quote

from sqlalchemy.engine import URL, make_url

from tenantry.errors import ConfigError

#: The drivers tenantry builds its engines with, by dialect.
SYNC_DRIVERS = {"postgresql": "postgresql+psycopg", "sqlite": "sqlite+pysqlite"}
ASYNC_DRIVERS = {"postgresql": "postgresql+psycopg", "sqlite": "sqlite+aiosqlite"}
SUPPORTED_DIALECTS = frozenset(SYNC_DRIVERS)
#: Drivers a URL may name without comment ("" is the bare ``postgresql://``).
_OWN_DRIVERS = {
    "postgresql": frozenset({"", "psycopg", "psycopg_async"}),
    "sqlite": frozenset({"", "pysqlite", "aiosqlite"}),
}

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# SQLAlchemy's own split of a URL (sqlalchemy.engine.url._parse_url), applied to
# the template so that each ${NAME} is known to sit in the user, password, host...
_URL_PARTS = re.compile(
    r"""
    (?P<name>[\w+]+)://
    (?:(?P<username>[^:/]*)(?::(?P<password>[^@]*))?@)?
    (?:(?:\[(?P<ipv6host>[^/?]+)\]|(?P<ipv4host>[^/:?]+))?(?::(?P<port>[^/?]*))?)?
    (?:/(?P<database>[^?]*))?
    (?:\?(?P<query>.*))?
    """,
    re.X | re.S,
)
#: SQLAlchemy percent-decodes these parts, so a value put there is percent-encoded.
_ENCODED_PARTS = frozenset({"username", "password", "query"})
# A URL and nothing else: its password runs to the last "@" (a raw password may
# hold @ # : / ? % [ ] and spaces; a host never holds "@").
_WHOLE_URL = re.compile(
    r"(?P<head>\s*[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*:)(?P<password>.*)@(?P<rest>[^@\s]*\s*)",
    re.S,
)
# URLs quoted in free text (an error message): each password runs to the last
# "@" of its word that is followed by a host.
_PASSWORD_IN_TEXT = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s'\"]*:)"
    r"(?P<password>\S*)"
    r"@(?=[^@\s/?'\"]*(?:[\s/?'\"]|$))"
)


def _part_at(parts: re.Match[str] | None, position: int) -> str | None:
    """Which part of the URL (``password``, ``host``...) the template character at *position* is."""
    if parts is None:
        return None
    for name, text in parts.groupdict().items():
        start, end = parts.span(name)
        if text is not None and start <= position < end:
            return name
    return None


def _substitute(template: str, value_for: Callable[[str, str | None], str]) -> str:
    parts = _URL_PARTS.match(template)

    def sub(match: re.Match[str]) -> str:
        part = _part_at(parts, match.start())
        value = value_for(match.group(1), part)
        if part in _ENCODED_PARTS:
            return quote(value, safe="")
        if part == "database" and "?" in value:
            raise ConfigError(
                f"environment variable {match.group(1)} (used as the database name in a "
                "store URL) contains '?'"
            )
        return value

    return _ENV_REF.sub(sub, template)


def expand_env(template: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace ``${NAME}`` with the environment's value, percent-encoded where the URL needs it.

    A missing variable is an error. The user name, password and query values
    are encoded, so any character may appear in them; the host, port and
    database are put in as they are.
    """
    env = os.environ if environ is None else environ

    def value_for(name: str, _part: str | None) -> str:
        if name not in env:
            raise ConfigError(f"environment variable {name} (used in a store URL) is not set")
        return env[name]

    return _substitute(template, value_for)


def placeholder_url(template: str) -> str:
    """*template* with every ``${NAME}`` replaced by a harmless stand-in, to parse it unexpanded."""
    return _substitute(template, lambda _name, part: "1" if part == "port" else "x")


def parse_url(template: str, environ: Mapping[str, str] | None = None, *, expand: bool) -> URL:
    """The SQLAlchemy URL of *template*, expanded or with stand-ins for the secrets."""
    return make_url(expand_env(template, environ) if expand else placeholder_url(template))


def mask_url(url: str | URL) -> str:
    """A URL, or a message quoting URLs, safe to show: each password becomes ``***``.

    A password is hidden whether literal, percent-encoded or a ``${NAME}``
    reference, and whatever characters it holds (``@ # : / ? % [ ]``, spaces).
    """
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    text = str(url)
    whole = _WHOLE_URL.fullmatch(text)
    if whole is not None:
        return f"{whole.group('head')}***@{whole.group('rest')}"
    return _PASSWORD_IN_TEXT.sub(lambda m: m.group("head") + "***@", text)


def check_dialect(url: URL) -> None:
    """Refuse a database tenantry does not support, naming those it does."""
    dialect = url.get_backend_name()
    if dialect in SUPPORTED_DIALECTS:
        return
    hint = " (write postgresql://)" if dialect == "postgres" else ""
    supported = ", ".join(sorted(SUPPORTED_DIALECTS))
    raise ValueError(f"unsupported database {dialect!r}{hint}: expected one of {supported}")


def driver_note(url: URL) -> str | None:
    """What to tell a user whose URL names a driver tenantry does not use, or None."""
    dialect, _, driver = url.drivername.partition("+")
    if driver in _OWN_DRIVERS.get(dialect, frozenset({driver})):
        return None
    if dialect == "postgresql":
        return (
            f"the URL names the {driver} driver, but tenantry connects to PostgreSQL with "
            "psycopg 3 for both sync and async sessions (postgresql+psycopg); "
            f"{driver} is not used"
        )
    return f"the URL names the {driver} driver, but tenantry connects to SQLite with pysqlite"

"""Tenant ids and the SQL identifiers derived from them.

A tenant id ends up inside schema names, database names and file names, so it
is checked against a strict allow-list *before* anything else sees it. The
pattern admits nothing that needs quoting, but every identifier is still quoted
by the dialect when DDL is built (defence in depth).
"""

from __future__ import annotations

import re

from tenantry.errors import InvalidIdentifierError, InvalidTenantId

TENANT_ID_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
_TENANT_ID_RE = re.compile(TENANT_ID_PATTERN)
# Identifiers tenantry derives (schema, database, role names). PostgreSQL's limit
# is 63 bytes; names starting with pg_ are reserved by the server.
_IDENTIFIER_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

MAX_TENANT_ID_LENGTH = 40


def validate_tenant_id(value: object) -> str:
    """Return *value* if it is a valid tenant id, else raise :class:`InvalidTenantId`."""
    if not isinstance(value, str):
        raise InvalidTenantId(f"tenant id must be a string, got {type(value).__name__}")
    # fullmatch with \Z semantics: "$" alone would accept a trailing newline.
    if _TENANT_ID_RE.fullmatch(value) is None or value.startswith("pg_"):
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise InvalidTenantId(
            f"invalid tenant id {shown!r}: use 1-{MAX_TENANT_ID_LENGTH} characters "
            "a-z, 0-9 and _, starting with a letter (and not with 'pg_')"
        )
    return value


def is_valid_tenant_id(value: object) -> bool:
    try:
        validate_tenant_id(value)
    except InvalidTenantId:
        return False
    return True


def validate_identifier(value: str, what: str = "identifier") -> str:
    """Check a derived SQL identifier (schema, database or role name)."""
    if _IDENTIFIER_RE.fullmatch(value) is None or value.startswith("pg_"):
        raise InvalidIdentifierError(
            f"invalid {what} {value!r}: use at most 63 characters a-z, 0-9 and _, "
            "starting with a letter or _ (and not with 'pg_')"
        )
    return value

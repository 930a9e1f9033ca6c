"""API keys that tenantry issues to tenants, stored as hashes in the catalog.

A key looks like ``tk_<id>_<secret>``: ``id`` is 12 hex digits, public, used to
find the row and to name the key in lists and logs; ``secret`` is 32 random
bytes. Only the SHA-256 of the whole key is stored. A fast hash is enough here
(no password stretching): the secret has 256 bits of entropy, so a leaked
table cannot be brute-forced, and a per-request check must stay cheap.

Verification is cached like catalog lookups (``catalog_cache_ttl``): revoking
a key takes effect at once in this process and within the TTL elsewhere. Keys
live in the ``tenantry_api_keys`` table next to ``tenantry_tenants`` and are
deleted with their tenant, so a tenant created later under the same id does
not inherit them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError

from tenantry.errors import (
    ApiKeyNotFoundError,
    AuthenticationError,
    TenantNotFoundError,
    TenantryError,
)
from tenantry.tenancy.catalog import Catalog, api_keys_table
from tenantry.tenancy.ids import validate_tenant_id

KEY_PREFIX = "tk_"
_ID_HEX_DIGITS = 12
_SECRET_BYTES = 32
# token_urlsafe(32) is 43 characters of the URL-safe base64 alphabet.
_KEY_RE = re.compile(r"^tk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_ID_RE = re.compile(r"^[0-9a-f]{12}$")


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; tenantry stores UTC.
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """What is known about a key, without its secret."""

    id: str
    tenant_id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def to_dict(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "name": self.name,
            "created_at": self.created_at.isoformat(),
            "revoked_at": iso(self.revoked_at),
            "last_used_at": iso(self.last_used_at),
        }


@dataclass(frozen=True)
class IssuedApiKey:
    """A freshly issued key: the only time its plaintext exists anywhere."""

    key: str = field(repr=False)  # kept out of repr so it never lands in a log line
    info: ApiKey


def _row_to_key(row: RowMapping) -> ApiKey:
    created = _aware(row["created_at"])
    assert created is not None
    return ApiKey(
        id=row["id"],
        tenant_id=row["tenant_id"],
        name=row["name"],
        created_at=created,
        revoked_at=_aware(row["revoked_at"]),
        last_used_at=_aware(row["last_used_at"]),
    )


def parse_key_id(key: str) -> str | None:
    """The public id of a well-formed key, or ``None``; never touches the database."""
    match = _KEY_RE.fullmatch(key) if len(key) < 100 else None
    return match.group(1) if match else None


class ApiKeys:
    """Issue, list, revoke and verify the API keys of the tenants in a catalog."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        ttl: float | None = None,
        touch_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.catalog = catalog
        self.ttl = catalog.ttl if ttl is None else ttl
        self.touch_interval = timedelta(seconds=touch_interval)
        self._clock = clock
        # key id -> (expires at, info, stored hash)
        self._cache: dict[str, tuple[float, ApiKey, str]] = {}
        self._lock = threading.Lock()

    # -- administration -------------------------------------------------------
    def issue(self, tenant_id: str, *, name: str = "") -> IssuedApiKey:
        """Create a key for an existing tenant; the plaintext is returned only here."""
        if len(name) > 200:
            raise TenantryError("an API key's name is at most 200 characters")
        self.catalog.get(validate_tenant_id(tenant_id), cached=False)  # must exist
        self.catalog.ensure_schema()
        for _ in range(5):
            key_id = secrets.token_hex(_ID_HEX_DIGITS // 2)
            key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"
            info = ApiKey(id=key_id, tenant_id=tenant_id, name=name, created_at=_now())
            try:
                with self.catalog.engine.begin() as conn:
                    conn.execute(
                        insert(api_keys_table).values(
                            id=key_id,
                            tenant_id=tenant_id,
                            name=name,
                            secret_hash=_hash(key),
                            created_at=info.created_at,
                        )
                    )
            except IntegrityError:
                # An id collision (48 random bits), or the tenant vanished meanwhile.
                if self.catalog.find(tenant_id) is None:
                    raise TenantNotFoundError(f"tenant {tenant_id!r} does not exist") from None
                continue
            return IssuedApiKey(key=key, info=info)
        raise TenantryError("could not pick an unused API key id")

    def list(self, tenant_id: str | None = None, *, include_revoked: bool = True) -> list[ApiKey]:
        """Keys (never their secrets), oldest first; all tenants' when *tenant_id* is None."""
        self.catalog.ensure_schema()
        query = select(api_keys_table).order_by(api_keys_table.c.created_at, api_keys_table.c.id)
        if tenant_id is not None:
            query = query.where(api_keys_table.c.tenant_id == validate_tenant_id(tenant_id))
        if not include_revoked:
            query = query.where(api_keys_table.c.revoked_at.is_(None))
        with self.catalog.engine.connect() as conn:
            return [_row_to_key(row) for row in conn.execute(query).mappings()]

    def get(self, key_id: str, *, tenant_id: str | None = None) -> ApiKey:
        """One key by its public id; with *tenant_id*, only if that tenant owns it."""
        found = self._find(key_id)
        if found is None or (tenant_id is not None and found[0].tenant_id != tenant_id):
            raise ApiKeyNotFoundError(f"API key {key_id!r} does not exist")
        return found[0]

    def revoke(self, key_id: str, *, tenant_id: str | None = None) -> ApiKey:
        """Revoke a key for good (revoking twice is fine).

        Pass *tenant_id* when a tenant's own administrator asks, so that one
        tenant can never revoke, or learn about, another tenant's keys.
        """
        current = self.get(key_id, tenant_id=tenant_id)
        if current.revoked_at is None:
            now = _now()
            with self.catalog.engine.begin() as conn:
                conn.execute(
                    update(api_keys_table)
                    .where(api_keys_table.c.id == key_id, api_keys_table.c.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
        self.invalidate(key_id)
        return self.get(key_id, tenant_id=tenant_id)

    # -- verification ---------------------------------------------------------
    def invalidate(self, key_id: str | None = None) -> None:
        with self._lock:
            if key_id is None:
                self._cache.clear()
            else:
                self._cache.pop(key_id, None)

    def verify_cached(self, key: str) -> ApiKey | None:
        """The key's info from a fresh cache entry, ``None`` on a miss; never touches SQL.

        Raises :class:`AuthenticationError` for a malformed key or a cached
        entry whose hash does not match or that is revoked.
        """
        key_id = self._key_id(key)
        with self._lock:
            hit = self._cache.get(key_id)
        if hit is None or hit[0] <= self._clock():
            return None
        return self._check(key, hit[1], hit[2])

    def verify(self, key: str) -> ApiKey:
        """The info of a valid key; :class:`AuthenticationError` otherwise."""
        cached = self.verify_cached(key)
        if cached is not None:
            return cached
        key_id = self._key_id(key)
        found = self._find(key_id)
        if found is None:
            raise AuthenticationError("unknown API key")
        info, stored_hash = found
        checked = self._check(key, info, stored_hash)
        if checked.last_used_at is None or _now() - checked.last_used_at >= self.touch_interval:
            checked = self._touch(checked)
        with self._lock:
            self._cache[key_id] = (self._clock() + self.ttl, checked, stored_hash)
        return checked

    async def averify(self, key: str) -> ApiKey:
        """:meth:`verify` for asyncio: a cache miss is read in a thread, never on the loop."""
        cached = self.verify_cached(key)
        if cached is not None:
            return cached
        return await asyncio.to_thread(self.verify, key)

    @staticmethod
    def _key_id(key: str) -> str:
        key_id = parse_key_id(key)
        if key_id is None:
            raise AuthenticationError("malformed API key")
        return key_id

    @staticmethod
    def _check(key: str, info: ApiKey, stored_hash: str) -> ApiKey:
        if not hmac.compare_digest(_hash(key), stored_hash):
            raise AuthenticationError("unknown API key")
        if info.revoked_at is not None:
            raise AuthenticationError("API key revoked")
        return info

    def _find(self, key_id: str) -> tuple[ApiKey, str] | None:
        if not _ID_RE.fullmatch(key_id):
            return None
        self.catalog.ensure_schema()
        with self.catalog.engine.connect() as conn:
            row = (
                conn.execute(select(api_keys_table).where(api_keys_table.c.id == key_id))
                .mappings()
                .first()
            )
        return None if row is None else (_row_to_key(row), row["secret_hash"])

    def _touch(self, info: ApiKey) -> ApiKey:
        """Record use, at most once per ``touch_interval``: a write per request would not scale."""
        now = _now()
        with self.catalog.engine.begin() as conn:
            conn.execute(
                update(api_keys_table)
                .where(api_keys_table.c.id == info.id)
                .values(last_used_at=now)
            )
        return replace(info, last_used_at=now)

"""The tenant from a signed JWT (``Authorization: Bearer <jwt>``), via PyJWT.

The dangerous parts of JWT are the ones a token gets to choose, so none of them
are left to the token: the algorithm allow-list is fixed when the resolver is
built (``alg: none`` cannot be allowed, and HMAC and public-key algorithms
cannot be mixed, which is what makes "algorithm confusion" possible: an
RS256 public key used as an HS256 secret), ``exp`` is required, and a token
that fails any check is a 401, never "no token".

PyJWT is imported only when a :class:`JWTResolver` is built, so the rest of
``tenantry.web`` works without it (``pip install tenantry[web]`` brings it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tenantry.errors import AuthenticationError, ConfigError
from tenantry.tenancy.apikeys import KEY_PREFIX
from tenantry.tenancy.ids import is_valid_tenant_id
from tenantry.web.asgi import RequestInfo
from tenantry.web.resolvers import Candidate, Strength

if TYPE_CHECKING:
    from jwt.types import Options

# Larger tokens are refused before any parsing (headers are attacker-sized).
MAX_TOKEN_LENGTH = 8192


class JWTResolver:
    """The tenant claim of a bearer JWT, after the signature and claims check out.

    *key* is the HMAC secret (at least as long as the hash: 32 bytes for HS256)
    or the public key (PEM or a ``cryptography`` key object) for RS*/PS*/ES*/EdDSA.
    *algorithms* is the explicit allow-list. ``exp`` is required and checked with
    *leeway* seconds for clock skew; ``aud``/``iss`` are checked (and required)
    when *audience*/*issuer* are given. Bearer tokens starting with ``tk_`` are
    API keys and are left to :class:`~tenantry.web.resolvers.APIKeyResolver`.

    *tenants_claim* (off by default) names a claim holding a list of tenant
    ids, for tokens issued to someone who works in several tenants: the
    request's host or header then chooses one of them (a tenant outside the
    list is a 403). A token carries either *claim* or *tenants_claim*, not both.
    """

    def __init__(
        self,
        key: Any,
        *,
        algorithms: Sequence[str],
        claim: str = "tenant_id",
        tenants_claim: str | None = None,
        audience: str | Sequence[str] | None = None,
        issuer: str | Sequence[str] | None = None,
        leeway: float = 10.0,
        name: str = "jwt",
    ) -> None:
        if isinstance(algorithms, str):
            raise ConfigError("algorithms must be a list, e.g. ['RS256']")
        self.algorithms = tuple(algorithms)
        self._key = _prepare_key(key, self.algorithms)
        self.claim = claim
        if tenants_claim == claim:
            raise ConfigError("claim and tenants_claim must be different claims")
        self.tenants_claim = tenants_claim
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        required = ["exp"]
        if audience is not None:
            required.append("aud")
        if issuer is not None:
            required.append("iss")
        self._options: Options = {"require": required, "enforce_minimum_key_length": True}
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    async def resolve(self, request: RequestInfo) -> Candidate | None:
        tokens = {t for t in request.bearer_tokens() if not t.startswith(KEY_PREFIX)}
        if not tokens:
            return None
        if len(tokens) > 1:
            raise AuthenticationError("more than one bearer token presented")
        claims = self.decode(tokens.pop())
        tenant_id = claims.get(self.claim)
        several = claims.get(self.tenants_claim) if self.tenants_claim is not None else None
        if several is not None:
            if tenant_id is not None:
                raise AuthenticationError(
                    f"the token has both a {self.claim!r} and a {self.tenants_claim!r} claim"
                )
            return Candidate.one_of(self.tenant_list(several), self._name)
        if tenant_id is None:
            wanted = repr(self.claim)
            if self.tenants_claim is not None:
                wanted += f" or {self.tenants_claim!r}"
            raise AuthenticationError(f"the token has no {wanted} claim")
        if not isinstance(tenant_id, str) or not is_valid_tenant_id(tenant_id):
            raise AuthenticationError(f"the token's {self.claim!r} claim is not a valid tenant id")
        return Candidate(tenant_id, self._name, Strength.CREDENTIAL)

    def tenant_list(self, value: Any) -> list[str]:
        """The tenants-claim's ids; :class:`AuthenticationError` unless a non-empty list of ids."""
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(t, str) and is_valid_tenant_id(t) for t in value)
        ):
            raise AuthenticationError(
                f"the token's {self.tenants_claim!r} claim is not a non-empty list of tenant ids"
            )
        return value

    def decode(self, token: str) -> dict[str, Any]:
        """The verified claims; :class:`AuthenticationError` for any flaw."""
        import jwt

        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise AuthenticationError("malformed bearer token")
        try:
            return jwt.decode(
                token,
                self._key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options=self._options,
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("the token has expired") from None
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise AuthenticationError(f"invalid token: {exc}") from None


def _prepare_key(key: Any, algorithms: tuple[str, ...]) -> Any:
    """Check the allow-list and the key once, at start-up, instead of per request."""
    try:
        import jwt
        from jwt.algorithms import HMACAlgorithm
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ConfigError("JWTResolver needs PyJWT: pip install 'tenantry[web]'") from exc

    if not algorithms:
        raise ConfigError("JWTResolver needs at least one algorithm")
    if any(alg.lower() == "none" for alg in algorithms):
        raise ConfigError("the 'none' algorithm accepts unsigned tokens; it cannot be allowed")
    chosen = []
    for alg in algorithms:
        try:
            chosen.append((alg, jwt.get_algorithm_by_name(alg)))
        except NotImplementedError:
            raise ConfigError(f"unknown or unavailable JWT algorithm {alg!r}") from None
    if len({isinstance(algorithm, HMACAlgorithm) for _, algorithm in chosen}) > 1:
        raise ConfigError(
            "do not mix HMAC (HS*) and public-key algorithms: a public key would "
            "then verify forged HMAC tokens (algorithm confusion)"
        )
    prepared: Any = None
    for alg, algorithm in chosen:
        try:
            prepared = algorithm.prepare_key(key)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise ConfigError(f"the key does not suit {alg}: {exc}") from None
        problem = algorithm.check_key_length(prepared)
        if problem:
            raise ConfigError(f"{alg}: {problem}")
    return prepared

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
    """

    def __init__(
        self,
        key: Any,
        *,
        algorithms: Sequence[str],
        claim: str = "tenant_id",
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
        if tenant_id is None:
            raise AuthenticationError(f"the token has no {self.claim!r} claim")
        if not is_valid_tenant_id(tenant_id):
            raise AuthenticationError(f"the token's {self.claim!r} claim is not a valid tenant id")
        return Candidate(tenant_id, self._name, Strength.CREDENTIAL)

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

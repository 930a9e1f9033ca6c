"""What the service needs to be told: its tokens, secrets and limits.

The service refuses to exist without an admin token (unless ``insecure_dev``
says so explicitly), so a misconfigured deployment fails at start-up instead
of serving tenants' data to anyone who asks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tenantry.errors import ConfigError

#: Shorter tokens are refused: the admin token guards every tenant's data.
MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class ServiceSettings:
    """Settings of :func:`tenantry.service.create_app`.

    ``admin_token``
        Bearer token for ``/api/...`` and the dashboard login. Required unless
        ``insecure_dev`` is set.
    ``insecure_dev``
        Allow running without an admin token: every admin endpoint is open.
        For a developer's own machine only (the CLI also refuses a
        non-loopback address). Other web pages in the developer's browser are
        kept out by :class:`~tenantry.service.origin.OriginGuard`: only
        loopback ``Host`` names, and writes only from the service's own origin.
    ``metrics_token``
        A second token that opens ``/metrics`` only, for the Prometheus
        scraper, so it does not need the admin token. ``/metrics`` always
        accepts the admin token too.
    ``metrics_public``
        Serve ``/metrics`` without a token (tenant ids appear in labels).
    ``session_secret``
        Key material for the dashboard's session cookies and CSRF tokens.
        Default: random per process, so sessions end when the service restarts.
    ``top_tenants`` / ``top_kinds``
        Label budget of ``/metrics``: the N tenants (kinds) with the deepest
        queues get their own label values, the rest are summed as ``other``.
    ``sample_interval`` / ``samples_kept``
        How often the overview and throughput chart are refreshed from the
        database, and how many samples the chart shows.
    ``stats_window``
        Seconds over which "recent" outcomes (completed, dead, throughput) count.
    """

    admin_token: str | None = field(default=None, repr=False)
    insecure_dev: bool = False
    metrics_token: str | None = field(default=None, repr=False)
    metrics_public: bool = False
    session_secret: bytes | None = field(default=None, repr=False)
    session_max_age: float = 12 * 3600.0
    top_tenants: int = 50
    top_kinds: int = 20
    sample_interval: float = 2.0
    samples_kept: int = 150
    stats_window: float = 300.0

    def __post_init__(self) -> None:
        if self.admin_token is None and not self.insecure_dev:
            raise ConfigError(
                "the service needs an admin token (--admin-token or TENANTRY_ADMIN_TOKEN); "
                "pass --insecure-dev to run without one on a development machine"
            )
        for name in ("admin_token", "metrics_token"):
            value = getattr(self, name)
            if value is not None and (len(value) < MIN_TOKEN_LENGTH or value != value.strip()):
                raise ConfigError(
                    f"{name} must be at least {MIN_TOKEN_LENGTH} characters, without "
                    "surrounding spaces (generate one with: python -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))')"
                )
        if self.top_tenants < 1 or self.top_kinds < 1:
            raise ConfigError("top_tenants and top_kinds must be at least 1")
        if self.sample_interval <= 0 or self.samples_kept < 2:
            raise ConfigError("sample_interval must be positive and samples_kept at least 2")
        if self.stats_window <= 0 or self.session_max_age <= 0:
            raise ConfigError("stats_window and session_max_age must be positive")

    @property
    def open_admin(self) -> bool:
        """Admin endpoints need no token (``insecure_dev`` without a token)."""
        return self.admin_token is None

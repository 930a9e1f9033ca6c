"""A store's engines are kept by role, bounded per tenant, and forgotten per tenant."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine

from tenantry.tenancy.engines import EngineRole, StoreEngines

FIRST: EngineRole[Engine] = EngineRole("first")
SECOND: EngineRole[Engine] = EngineRole("second")


def _engine() -> Engine:
    return create_engine("sqlite://")


def test_one_engine_per_role_made_on_first_use() -> None:
    engines = StoreEngines(tenant_capacity=4)
    made: list[Engine] = []

    def make() -> Engine:
        made.append(_engine())
        return made[-1]

    assert engines.get(FIRST, make) is engines.get(FIRST, make)
    assert engines.get(SECOND, make) is not engines.get(FIRST, make)
    assert len(made) == 2
    engines.dispose()
    assert engines.get(FIRST, make) is made[2]  # made anew after disposal


def test_tenant_engines_are_bounded_and_forgotten_per_tenant() -> None:
    engines = StoreEngines(tenant_capacity=3)
    acme = engines.tenant(FIRST, "acme", _engine)
    assert engines.tenant(FIRST, "acme", _engine) is acme
    assert engines.tenant(SECOND, "acme", _engine) is not acme  # same tenant, other role
    globex = engines.tenant(FIRST, "globex", _engine)
    assert len(engines.tenant_sync) == 3
    engines.tenant(FIRST, "initech", _engine)  # evicts the least recently used
    assert len(engines.tenant_sync) == 3
    engines.forget_tenant("globex")
    assert len(engines.tenant_sync) == 2
    assert engines.tenant(FIRST, "globex", _engine) is not globex
    engines.dispose()
    assert len(engines.tenant_sync) == 0

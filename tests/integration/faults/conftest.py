"""Fixtures of the fault-injection tests: worker fleets and a private PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.faults.harness import IN_CI, WorkerFleet
from tests.pgcluster import PgCluster, PgClusterUnavailable

FleetFactory = Callable[[str], WorkerFleet]


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[FleetFactory]:
    """``make_fleet(url)``: worker subprocesses on *url*; all killed at teardown."""
    fleets: list[WorkerFleet] = []

    def factory(url: str) -> WorkerFleet:
        fleet = WorkerFleet(url, tmp_path / f"logs{len(fleets) + 1}")
        fleets.append(fleet)
        return fleet

    try:
        yield factory
    finally:
        for fleet in fleets:
            fleet.close()


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL server this test may stop and restart; always removed."""
    try:
        cluster = PgCluster()
    except PgClusterUnavailable as exc:
        if IN_CI:
            pytest.fail(f"CI=true and a private PostgreSQL cannot be run: {exc}", pytrace=False)
        pytest.skip(f"a private PostgreSQL cannot be run here: {exc}")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()

"""One warm simulation engine per test process (pytest-xdist worker).

Every simulation test that reaches ``fedge.simulations.simulate.simulate`` without an
engine of its own runs on this one, so the suite starts a SuperLink and a Ray
cluster once per worker instead of once per run (issue: start-up). The engine
starts on the first simulation only, and stops when the session ends.
"""

from collections.abc import Iterator

import pytest

from fedge.simulations.engine import SimulationEngine, sharing


@pytest.fixture(scope="session", autouse=True)
def warm_simulation_engine() -> Iterator[SimulationEngine]:
    with SimulationEngine() as engine, sharing(engine):
        yield engine

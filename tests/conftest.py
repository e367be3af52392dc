"""Fixtures for tests that run ``simulate()`` without starting any process."""

import contextlib
import subprocess

import pytest

import fedge.simulations.simulate as simulate_module


class EngineStandIn:
    """Stands in for the engine ``simulate()`` starts for a run of its own.

    It starts nothing; ``submit`` (a context manager factory, or None) is what
    its run slot yields, None meaning no run may be submitted.
    """

    def __init__(self, submit=None, **_):
        self.submit = submit
        self.started = False
        self.closed = False

    def start_in_background(self):
        self.started = True

    def close(self):
        self.closed = True

    @contextlib.contextmanager
    def run_slot(self):
        if self.submit is None:
            raise AssertionError("a run was about to be submitted")
        yield self.submit


@pytest.fixture
def stand_in_engines(monkeypatch):
    """Replace the run's own engine; after the test, every one must be closed."""
    engines = []

    def make(**kwargs):
        engine = EngineStandIn(**kwargs)
        engines.append(engine)
        return engine

    monkeypatch.setattr(simulate_module, "SimulationEngine", make)
    yield engines
    assert all(e.closed for e in engines), "simulate() left its engine running"


@pytest.fixture
def no_flower(monkeypatch, stand_in_engines):
    """Fail loudly if a run would be submitted or a Flower process start."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a Flower process was about to start")

    monkeypatch.setattr(simulate_module, "superlink_for_run", forbidden)
    monkeypatch.setattr(subprocess, "Popen", forbidden)
    return stand_in_engines


def _kind(item):
    """0 for real-deployment tests, 1 for other simulations and slow tests, 2 for the rest."""
    if item.get_closest_marker("e2e"):
        return 0
    if item.get_closest_marker("integration") or item.get_closest_marker("slow"):
        return 1
    return 2


def pytest_collection_modifyitems(items):
    """Put the modules of the slowest kinds first, each module's tests kept together.

    On two workers the suite ends when the last long test does: started
    early, the long ones overlap the rest, and the short ones fill the end.
    A module keeps its tests in order and together (its slowest test decides
    its place), so a module-scoped fixture is still set up once per worker.
    """
    module_kind = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        module_kind[module] = min(module_kind.get(module, 2), _kind(item))
    items.sort(key=lambda item: module_kind[item.nodeid.split("::")[0]])

"""Fixtures of the command-line tests."""

import pytest

import fedge.simulations.simulate as simulate_module


@pytest.fixture
def no_flower(monkeypatch):
    """Fail loudly if anything would start a SuperLink or a process."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a Flower process was about to start")

    monkeypatch.setattr(simulate_module, "superlink_for_run", forbidden)
    monkeypatch.setattr(simulate_module.subprocess, "Popen", forbidden)

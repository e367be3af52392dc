"""The Ray cluster a simulation runs on: a lean head's command, and the wiring.

Nothing here starts Ray (tests/integration/test_ray_cluster.py does).
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest

import fedge.simulations.simulate as simulate_module
from fedge.simulations.ray_head import RAY_ADDRESS_ENV, engine_env, ray_head_command


def test_lean_head_leaves_out_what_one_machine_does_not_need(tmp_path):
    command, address = ray_head_command(tmp_path / "ray", num_cpus=3)

    assert command[1:3] == ["start", "--head"]
    assert "--block" in command  # the head's processes stay in this run's tree
    for flag in ("--no-monitor", "--disable-usage-stats"):
        assert flag in command
    assert command[command.index("--include-dashboard") + 1] == "false"
    assert command[command.index("--num-cpus") + 1] == "3"
    assert command[command.index("--temp-dir") + 1] == str(tmp_path / "ray")
    assert address == f"127.0.0.1:{command[command.index('--port') + 1]}"


def test_every_port_of_the_head_is_a_distinct_free_one(tmp_path):
    command, _ = ray_head_command(tmp_path, num_cpus=1)

    ports = [int(command[i + 1]) for i, a in enumerate(command) if a.endswith("port")]
    assert len(ports) == 9
    assert len(set(ports)) == 9
    assert all(1024 < p < 65536 for p in ports)


@pytest.fixture
def submitted(monkeypatch):
    """Run simulate() to its `flwr run`; capture how its SuperLink was started."""
    seen = {}

    class Submitted(Exception):
        pass

    @contextlib.contextmanager
    def fake_superlink(workdir, *, simulation, env=None):
        seen["env"] = dict(env or {})
        yield SimpleNamespace(env={})

    class FakeEngine:
        def start_in_background(self):
            seen["engine"] = "private, starting early"

        def close(self):
            seen["engine closed"] = True

        @contextlib.contextmanager
        def run_slot(self):
            yield SimpleNamespace(env={})

    def fake_stream(*args, **kwargs):
        seen["stops early"] = kwargs["stop_when"] is not None
        raise Submitted

    monkeypatch.setattr(simulate_module, "running_superlink", fake_superlink)
    monkeypatch.setattr(simulate_module, "SimulationEngine", FakeEngine)
    monkeypatch.setattr(simulate_module, "stream_flwr_run", fake_stream)
    seen["stopped"] = Submitted
    return seen


def test_by_default_a_run_starts_an_engine_of_its_own(tmp_path, submitted):
    with pytest.raises(submitted["stopped"]):
        simulate_module.simulate(
            {}, num_clients=2, output_dir=tmp_path, run_name="r", echo=lambda *_: None
        )

    assert submitted["engine"] == "private, starting early"
    assert submitted["engine closed"]
    assert "env" not in submitted  # no SuperLink outside the engine
    # Its own engine ends with the run: the run need not wait out Flower's shutdown.
    assert submitted["stops early"]


def test_the_engine_environment_is_lean_and_polls_often():
    env = engine_env()

    assert RAY_ADDRESS_ENV not in env
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert env["RAY_enable_metrics_collection"] == "0"
    assert env["RAY_prestart_worker_first_driver"] == "false"
    assert float(env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"]) <= 0.1


def test_with_a_ray_address_the_engine_joins_that_cluster(tmp_path, submitted):
    with pytest.raises(submitted["stopped"]):
        simulate_module.simulate(
            {},
            num_clients=2,
            output_dir=tmp_path,
            run_name="r",
            ray_address="10.0.0.5:6379",
            echo=lambda *_: None,
        )

    assert submitted["env"][RAY_ADDRESS_ENV] == "10.0.0.5:6379"
    assert "engine" not in submitted

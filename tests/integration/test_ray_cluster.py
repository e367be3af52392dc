"""`fedge simulate --ray-address`: the run joins a Ray cluster started outside it.

The test starts its own single-node Ray head with the `ray` CLI (free ports, 2
CPUs, no dashboard, its own temp dir) in a session of its own, runs a short
simulation on it, and stops that session only: never `ray stop`, which would
end every other Ray cluster on the machine.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from fedge.cli.app import main as cli_main
from fedge.simulations.flower_processes import start_logged, stop_process
from fedge.simulations.ray_head import ray_head_command

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def ray_cluster(tmp_path: Path):
    """A Ray head of this test's own; yields (address, temp dir)."""
    # Short: Ray's socket paths under the temp dir must stay below ~107 chars.
    temp_dir = Path(tempfile.mkdtemp(prefix="fedge-rt-", dir="/tmp"))
    command, address = ray_head_command(temp_dir, num_cpus=2)
    process = start_logged(command, env=_env(), log_path=tmp_path / "head.log")
    try:
        # `fedge simulate` connects when the head is up (ray.init waits for it).
        yield address, temp_dir
    finally:
        stop_process(process)
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)


def _env():
    import os

    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    return env


def test_a_scenario_runs_its_own_clients_on_an_existing_ray_cluster(
    tmp_path: Path, ray_cluster, capsys
) -> None:
    """dp-digits-3-clients, cut to 1 round, on the test's own Ray head.

    Also the end-to-end case of issue 15: the scenario named for 3 clients
    runs 3 (it ran the default 10 before), and the start line says which
    setting a flag overrode.
    """
    address, temp_dir = ray_cluster

    code = cli_main(
        [
            "simulate",
            "--scenario",
            "dp-digits-3-clients",
            "--rounds",
            "1",
            "--ray-address",
            address,
            "--output-dir",
            str(tmp_path),
            "--run-name",
            "r",
        ]
    )

    assert code == 0
    out = capsys.readouterr().out
    assert "fedge simulate: 3 clients, 1 rounds," in out
    assert "num-server-rounds 1 from --rounds (scenario: 15)" in out
    run_dir = tmp_path / "r"
    assert len(pd.read_csv(run_dir / "partitions.csv")) == 3
    assert pd.read_csv(run_dir / "metrics.csv")["replies"].iloc[-1] == 3
    # The virtual clients ran as actors of this cluster: their workers log there.
    worker_logs = list(temp_dir.glob("session_*/logs/worker-*.out"))
    assert any("ClientAppActor" in p.read_text(errors="replace") for p in worker_logs)

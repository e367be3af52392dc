"""A user's own client.py, server.py and shared.py beside a script break nothing.

Each file exits the interpreter if imported. A script in that folder (first on
``sys.path``, and the working directory) runs ``fedge.simulate``, and
``fedge simulate`` runs from the folder too: every virtual client must train
(the old failure: Ray workers imported the user's client.py, every client
failed, and the run still ended "complete" with the untrained model). The
simulated run is then read with ``fedge.Run``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.figure import Figure

import fedge

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USER_FILES = ("client.py", "server.py", "shared.py", "simulations.py", "cli.py")
SMALL = {"local-epochs": 1, "fairness-report": False}

SCRIPT = """
import json, sys
import fedge
run = fedge.simulate(
    clients=2, rounds=1, output_dir=sys.argv[1], run_name="api",
    set={"local-epochs": 1, "fairness-report": False}, progress=True,
)
print("RESULT " + json.dumps({"status": run.status, "path": str(run.path)}))
"""


def user_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "my-project"
    folder.mkdir()
    for name in USER_FILES:
        (folder / name).write_text(f'raise SystemExit("user file {name} imported")\n')
    return folder


@pytest.fixture(scope="module")
def api_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[fedge.Run, str]:
    folder = user_folder(tmp_path_factory.mktemp("user"))
    (folder / "train.py").write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, "train.py", str(folder / "runs")],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert result["status"] == "complete"
    return fedge.Run(result["path"]), done.stdout


def test_a_script_beside_user_files_simulates_and_every_client_trains(api_run):
    run, output = api_run

    metrics = run.metrics
    assert metrics["round"].tolist() == [0, 1]
    assert metrics.loc[1, "replies"] == 2 and metrics.loc[1, "failures"] == 0
    assert metrics.loc[1, "central-accuracy"] > metrics.loc[0, "central-accuracy"]
    assert "user file" not in output
    # Progress as it came: the summary line and one line for the round.
    assert "fedge simulate: 2 clients, 1 rounds" in output
    assert "round 1/1  accuracy" in output and "replies 2/2" in output


def test_run_reads_the_simulated_folder(api_run):
    run, _ = api_run

    assert run.status == "complete"
    assert run.config["num-server-rounds"] == 1
    assert sorted(run.clients["round"]) == [1, 1]
    assert run.clients["num-examples"].gt(0).all()
    assert run.accuracy == pytest.approx(run.metrics["central-accuracy"].iloc[-1])
    assert run.epsilon_per_node == {}  # no DP in this run
    assert isinstance(run.model_card, dict) and run.model_card
    assert isinstance(run.plots()["accuracy.png"], Figure)


def test_fedge_simulate_from_a_folder_of_user_files_trains(tmp_path):
    folder = user_folder(tmp_path)

    done = subprocess.run(
        [
            sys.executable, "-m", "fedge.cli.app", "simulate",
            "--clients", "2", "--rounds", "1",
            "--set", "local-epochs=1", "--set", "fairness-report=false",
            "--output-dir", "runs", "--run-name", "cli",
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = fedge.Run(folder / "runs" / "cli")
    assert run.status == "complete"
    assert run.metrics.loc[1, "replies"] == 2
    assert run.metrics.loc[1, "failures"] == 0

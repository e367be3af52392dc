"""Every example script runs as a user starts it, tiny: 2 clients, 1 round.

Each writes only under the ``--out`` folder it is given.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

import fedge
from tests.fixtures.user_files import USER_FILES, run_python, user_folder

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def run_example(name: str, *args: str | Path, cwd: Path) -> str:
    return run_python([EXAMPLES / name, *args], cwd=cwd)


def test_compare_epsilon_runs_two_budgets_on_a_csv(tmp_path):
    out = tmp_path / "out"

    output = run_example(
        "compare_epsilon.py", "--out", out, "--clients", "2", "--rounds", "1",
        cwd=tmp_path,
    )  # fmt: skip

    assert {p.name for p in tmp_path.iterdir()} == {"out"}
    runs = {p.name.rsplit("-", 1)[-1]: fedge.Run(p) for p in (out / "runs").iterdir()}
    assert set(runs) == {"1", "8"}  # run names end in their ε
    run_low, run_high = runs["1"], runs["8"]
    low, high = (r.metrics["epsilon-max"].iloc[-1] for r in (run_low, run_high))
    assert 0 < low <= 1.0 + 1e-6 and low < high <= 8.0 + 1e-6
    assert "central-accuracy" in output and run_low.name in output


def test_own_model_beside_user_files_exports_and_the_device_predicts(tmp_path):
    """The script in a folder of the user's own client.py, server.py, shared.py.

    The folder is the working directory and first on ``sys.path`` (the
    script's own), and the model file shipped to every virtual client lies
    beside those files: no worker may import them instead of fedge's packages.
    """
    from sklearn.datasets import load_digits

    folder = user_folder(tmp_path)
    shutil.copy(EXAMPLES / "own_model.py", folder)
    out = tmp_path / "out"

    output = run_python(
        ["own_model.py", "--out", out, "--clients", "2", "--rounds", "1", "--export"],
        cwd=folder,
    )

    # Progress as it came: the summary line, then one line for the round.
    assert "fedge simulate: 2 clients, 1 rounds" in output
    assert "round 1/1  accuracy" in output and "replies 2/2" in output
    assert "verified: True" in output
    (run_dir,) = (out / "runs").iterdir()
    run = fedge.Run(run_dir)
    assert run.status == "complete"
    assert run.config["model"] == f"{folder / 'own_model.py'}:make_model"
    metrics = run.metrics
    assert metrics["round"].tolist() == [0, 1]
    assert metrics.loc[1, "replies"] == 2 and metrics.loc[1, "failures"] == 0
    assert metrics.loc[1, "central-accuracy"] > metrics.loc[0, "central-accuracy"]
    assert run.accuracy == pytest.approx(metrics["central-accuracy"].iloc[-1])
    assert sorted(run.clients["round"]) == [1, 1]
    assert run.clients["num-examples"].gt(0).all()
    assert run.epsilon_per_node == {}  # no DP in this run
    assert run.model_card["model"]  # written at the run's end
    assert isinstance(run.plots()["accuracy.png"], Figure)

    np.savez(out / "device-inputs.npz", x=load_digits().images[:4])
    device = run_example(
        "predict_on_device.py", run_dir, out / "device-inputs.npz", cwd=out
    )

    lines = [ln for ln in device.splitlines() if ln.startswith("row ")]
    assert len(lines) == 4
    assert all(ln.split()[2] in {str(d) for d in range(10)} for ln in lines), lines
    assert "torch imported: False" in device
    assert {p.name for p in tmp_path.iterdir()} == {"my-project", "out"}
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*USER_FILES, "own_model.py"]
    )


@pytest.mark.e2e
def test_local_deployment_runs_two_supernodes(tmp_path):
    out = tmp_path / "out"

    output = run_example(
        "local_deployment.py", "--out", out, "--rounds", "1", cwd=tmp_path
    )

    (work,) = out.iterdir()
    run = fedge.Run(work / "runs" / "local")
    assert run.status == "complete"
    assert run.metrics["round"].tolist() == [0, 1]
    assert run.metrics.loc[1, "replies"] == 2
    assert "complete: run folder" in output
    assert {p.name for p in tmp_path.iterdir()} == {"out"}

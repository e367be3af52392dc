"""A simulation in which every node fails every round ends failed, as a user meets it.

Started, as a new user would, from a folder holding their own ``client.py``:
the simulation engine's workers put the folder they start in first on their
import path, so they import that file instead of fedge's ``client`` package and
every ClientApp fails to load. The run must not pass the untrained initial
model off as its result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SHADOWED = "ModuleNotFoundError: No module named 'client.client_app'; 'client' is not a package"
USER_FILE_MARKER = "the user's own client.py was imported"


def fedge(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``fedge`` from this checkout as its console script would, in ``cwd``.

    ``-P`` keeps ``cwd`` off the command's own import path, as for the installed
    ``fedge`` script; this checkout comes first through ``PYTHONPATH``. The
    engine's workers put ``cwd`` first on theirs regardless: what the test needs.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH", "")) if p
    )
    return subprocess.run(
        [sys.executable, "-P", "-m", "fedge.cli.app", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_run_whose_nodes_import_the_users_client_py_fails_and_exports_nothing(
    tmp_path,
):
    user_folder = tmp_path / "my-project"
    user_folder.mkdir()
    (user_folder / "client.py").write_text(f"print({USER_FILE_MARKER!r})\n")
    run_dir = tmp_path / "runs" / "r"

    simulated = fedge(
        "simulate",
        "--clients",
        "2",
        "--rounds",
        "2",
        "--output-dir",
        str(run_dir.parent),
        "--run-name",
        "r",
        "--set",
        "export-onnx=true",
        cwd=user_folder,
    )

    # The shadowing really happened: the engine's workers ran the user's file.
    assert USER_FILE_MARKER in (run_dir / "flower.log").read_text()
    assert simulated.returncode == 1, simulated.stderr
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed"
    assert status["message"].startswith(
        "no round aggregated an update: after rounds 1-2 (4 nodes sampled, 4 failed"
    )
    assert (
        f"every node failed with {SHADOWED} (likely cause: a module named "
        in status["message"]
    )
    assert status["resumable"] is False
    assert simulated.stderr.strip().splitlines()[-1] == (
        f"fedge simulate: run failed: run did not complete (failed: {status['message']})"
    )
    # Once per round from the coordinator, and the engine's own line once,
    # instead of every node's traceback in every round.
    out = simulated.stdout.splitlines()
    for server_round in (1, 2):
        assert (
            sum(
                f"Round {server_round}: all 2 sampled nodes failed with the same error: "
                f"{SHADOWED} (likely cause:" in line
                for line in out
            )
            == 1
        ), simulated.stdout
    assert sum("is not a package" in line and "fedge" not in line for line in out) == 1
    # The metrics and checkpoints stay; no model is saved, none exported.
    assert (run_dir / "metrics.csv").read_text().count("\n") == 4  # header, 0-2
    assert list((run_dir / "checkpoints").glob("round-*.pt"))
    for name in ("model.pt", "model.json", "model.onnx", "manifest.json"):
        assert not (run_dir / name).exists(), name

    exported = fedge("export", str(run_dir), cwd=tmp_path)

    assert exported.returncode == 2
    assert exported.stdout == ""
    assert exported.stderr == (
        f"fedge export: error: {run_dir} has no trained model to export: its run "
        f"failed ({status['message']}); nothing was exported\n"
    )

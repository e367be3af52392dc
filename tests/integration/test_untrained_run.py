"""A simulation in which every node fails every round ends failed, as a user meets it.

The user's own model trains nowhere: its backward pass raises on every node
(its forward pass works, so the model is built and checked as usual). The run
must not pass the untrained initial model off as its result.
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
FAILURE = "RuntimeError: this model cannot take a training step"
UNTRAINABLE_MODEL = f"""
import torch
from torch import nn


class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError({FAILURE.split(": ", 1)[1]!r})


class Net(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.fc = nn.Linear(int(torch.tensor(input_shape).prod()), num_classes)

    def forward(self, x):
        return _NoBackward.apply(self.fc(x.flatten(1)))
"""


def fedge(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``fedge`` from this checkout as its console script would, in ``cwd``.

    ``-P`` keeps ``cwd`` off the command's own import path, as for the installed
    ``fedge`` script; this checkout comes first through ``PYTHONPATH``.
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


def test_a_run_whose_nodes_all_fail_ends_failed_and_exports_nothing(
    tmp_path,
):
    user_folder = tmp_path / "my-project"
    user_folder.mkdir()
    (user_folder / "untrainable.py").write_text(UNTRAINABLE_MODEL)
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
        "--model",
        "untrainable.py:Net",
        "--set",
        "export-onnx=true",
        cwd=user_folder,
    )

    assert simulated.returncode == 1, simulated.stderr
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed"
    assert status["message"].startswith(
        "no round aggregated an update: after rounds 1-2 (4 nodes sampled, 4 failed"
    )
    assert f"every node failed with {FAILURE}" in status["message"]
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
                f"{FAILURE}" in line
                for line in out
            )
            == 1
        ), simulated.stdout
    assert sum(line.strip() == FAILURE for line in out) == 1, simulated.stdout
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

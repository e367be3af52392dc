"""The coordinator under failure, with real Flower processes on 127.0.0.1:
nodes that never come, and a coordinator killed mid-run and resumed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from fedge.simulations.flower_processes import CONNECTION, session_members, stop_process
from tests.e2e.deployment import (
    APP_DIR,
    FEDGE,
    running_flower_node,
    running_superlink,
    submit_run,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_too_few_nodes_end_the_run_within_the_timeout(tmp_path: Path) -> None:
    wait_s = 8.0
    overrides = {
        "num-server-rounds": 2,
        "min-nodes": 2,
        "node-wait-timeout-s": wait_s,
        "output-dir": str(tmp_path / "runs"),
        "run-name": "lonely",
    }
    with (
        running_superlink(tmp_path) as link,
        running_flower_node(
            link,
            tmp_path,
            name="node0",
            node_config={"partition-id": 0, "num-partitions": 2},
        ),
    ):
        started = time.monotonic()
        done = submit_run(link, tmp_path, overrides, timeout_s=300)
        elapsed = time.monotonic() - started
        listed = subprocess.run(
            ["flwr", "list", CONNECTION, "--format", "json"],
            env=link.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    status = json.loads((tmp_path / "runs" / "lonely" / "status.json").read_text())
    assert status["state"] == "failed", done.stdout[-2000:]
    assert "Only 1 of 2 nodes connected after 8 s" in status["message"]
    # The operator sees one line saying why and where, not a traceback ...
    output = done.stdout + done.stderr
    (line,) = [s for s in output.splitlines() if "fedge: run failed:" in s]
    assert "Only 1 of 2 nodes connected after 8 s" in line
    assert str(tmp_path / "runs" / "lonely" / "status.json") in line
    assert "Traceback" not in output
    assert "unhandled exception" not in output.lower()
    # ... and Flower records the run as failed.
    (run,) = json.loads(listed.stdout)["runs"]
    assert run["status"] == "finished:failed", listed.stdout
    # Submitting, app start-up and the wait itself; far from Flower's endless wait.
    assert elapsed < wait_s + 60


def _kill_tree(root: int) -> None:
    """SIGKILL ``root``, its descendants and their sessions (SuperLink, ServerApp, Ray)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
                parents[int(entry.name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, grew = {root}, True
    while grew:
        new = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= new
        grew = bool(new)
    for pid in tree:
        for member in [pid, *session_members(pid)]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(member, signal.SIGKILL)


def _simulate_command(out_dir: Path, *extra: str) -> list[str]:
    return [
        *FEDGE,
        "simulate",
        "--clients",
        "3",
        "--rounds",
        "4",
        "--output-dir",
        str(out_dir),
        "--run-name",
        "killed",
        # Slow rounds (a few seconds each) leave time to kill the run mid-way.
        "--set",
        "local-epochs=25",
        "--set",
        "strategy=fedadam",
        "--set",
        "server-learning-rate=0.05",
        *extra,
    ]


def test_killed_coordinator_resumes_at_the_next_round(tmp_path: Path) -> None:
    out_dir = tmp_path / "runs"
    run_dir = out_dir / "killed"
    first = subprocess.Popen(
        _simulate_command(out_dir),
        cwd=APP_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "checkpoints" / "round-0002.pt").exists():
            assert first.poll() is None, first.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "round 2 never checkpointed"
            time.sleep(0.05)
        _kill_tree(first.pid)  # the coordinator dies at once, mid-run
        first.wait(timeout=60)
    finally:
        stop_process(first)
    killed_status = json.loads((run_dir / "status.json").read_text())
    assert killed_status["state"] != "complete"
    rounds_before = pd.read_csv(run_dir / "metrics.csv")["round"].tolist()
    assert 2 <= max(rounds_before) < 4, rounds_before

    resumed = subprocess.run(
        _simulate_command(out_dir, "--set", "resume=true"),
        cwd=APP_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert metrics["round"].tolist() == [0, 1, 2, 3, 4]  # no gap, no duplicate
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "complete"
    assert status["final_round"] == 4
    assert "resuming after round" in (run_dir / "flower.log").read_text()
    meta = json.loads((run_dir / "model.json").read_text())
    assert meta["provenance"]["rounds"] == 4

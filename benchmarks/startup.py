"""What a user waits for: a whole ``fedge simulate`` and ``make demo``, timed from outside (issue 25).

Figures, in one run on this machine:

- ``run_wall_s_10x5``: ``fedge simulate --clients 10 --rounds 5`` (no export,
  the default), from the command's start to its exit, as a user times it;
- ``run_wall_s_10x5_warm``: the same run submitted to a warm engine
  (:mod:`fedge.simulations.engine`) that earlier runs started: the median of
  :data:`WARM_RUNS` runs after the first, what a study cell or a simulation
  test pays;
- ``demo_wall_s``: ``python -m fedge.simulations.demo`` (10 clients, 10 DP rounds,
  the ONNX export and the device check) from start to exit, and
  ``demo_result_s``, when its result line appeared;
- ``startup_*``: where the seconds of ``run_wall_s_10x5`` go, from the
  command's own progress lines (each stamped when it reached this process):
  ``to_submit`` (the command's imports, the data checks, the SuperLink's
  start), ``to_server_ready`` (``flwr run`` builds and submits the app, the
  simulation process starts and installs it, the ServerApp imports and
  prepares data, model and round 0), ``round1`` (Ray's start, each worker's
  imports, the first training), ``rounds`` (the remaining rounds), ``finish``
  (per-client evaluation, the model card), ``to_exit`` (Flower's shutdown,
  the report, the process's exit). Flower relays log lines in batches every
  half second or so: each stamp is late by up to that much.

``--baseline DIR`` also times the fedge source tree in ``DIR`` (e.g. a ``git
worktree`` of an older commit) for a before/after in one run (``before_*``).

Run: ``python -m benchmarks startup`` (or ``python -m benchmarks.startup
[--baseline DIR]``, which prints the figures without writing them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.clientapp_import import REPO_ROOT

CLIENTS, ROUNDS = 10, 5
WARM_RUNS = 3
TARGETS = {"run_wall_s_10x5": 12.0, "demo_wall_s": 30.0}
# The progress lines that mark each stage, in the order they appear.
_STAGES = {
    "submit": re.compile(r"^fedge simulate: \d+ clients"),
    "server_ready": re.compile(r"fedge: round 0/"),
    "round1": re.compile(r"fedge: round 1/"),
    "last_round": re.compile(rf"fedge: round {ROUNDS}/"),
    "complete": re.compile(r"fedge: fedge run complete"),
}
_DEMO_RESULT = re.compile(r"^Final central accuracy")
_WARM = """
import sys, time
from pathlib import Path
from fedge.simulations.engine import SimulationEngine
from fedge.simulations.simulate import simulate
walls = []
with SimulationEngine() as engine:
    for i in range(int(sys.argv[1])):
        start = time.monotonic()
        simulate({"num-server-rounds": int(sys.argv[2])}, num_clients=int(sys.argv[3]),
                 output_dir=Path(sys.argv[4]), run_name=f"warm{i}", engine=engine,
                 echo=lambda *_: None)
        walls.append(time.monotonic() - start)
print("WALLS", *walls, flush=True)
"""


def timed_lines(command: list[str], *, app_root: Path, cwd: Path) -> dict[str, Any]:
    """Run ``command`` with ``app_root`` first on the path; stamp each output line.

    Returns
    -------
    dict
        ``wall_s`` and ``lines``: ``(seconds since start, text)`` pairs.

    Raises
    ------
    RuntimeError
        The command exited non-zero (its last lines in the message).
    """
    env = {**os.environ, "PYTHONPATH": str(app_root)}
    env.pop("RAY_ADDRESS", None)
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines = [(time.monotonic() - started, line.rstrip()) for line in process.stdout]
    process.wait()
    wall_s = time.monotonic() - started
    if process.returncode != 0:
        tail = "\n".join(text for _, text in lines[-20:])
        raise RuntimeError(f"{command[:4]} exited {process.returncode}:\n{tail}")
    return {"wall_s": wall_s, "lines": lines}


def stage_seconds(lines: list[tuple[float, str]], wall_s: float) -> dict[str, float]:
    """Split a run's wall time at its progress lines (:data:`_STAGES`)."""
    at: dict[str, float] = {}
    for stamp, text in lines:
        for stage, pattern in _STAGES.items():
            if stage not in at and pattern.search(text):
                at[stage] = stamp
    marks = ["submit", "server_ready", "round1", "last_round", "complete"]
    missing = [m for m in marks if m not in at]
    if missing:
        raise RuntimeError(f"the run printed no line for {missing}")
    return {
        "startup_to_submit_s": at["submit"],
        "startup_to_server_ready_s": at["server_ready"] - at["submit"],
        "startup_round1_s": at["round1"] - at["server_ready"],
        "rounds_after_first_s": at["last_round"] - at["round1"],
        "finish_s": at["complete"] - at["last_round"],
        "to_exit_s": wall_s - at["complete"],
    }


def simulate_run(app_root: Path) -> dict[str, float]:
    """Time ``fedge simulate --clients 10 --rounds 5`` of the tree ``app_root``."""
    with tempfile.TemporaryDirectory(prefix="fedge-bench-") as tmp:
        run = timed_lines(
            [
                sys.executable,
                "-m",
                "fedge.cli.app",
                "simulate",
                "--clients",
                str(CLIENTS),
                "--rounds",
                str(ROUNDS),
                "--output-dir",
                tmp,
                "--run-name",
                "bench",
                "--verbose",
            ],
            app_root=app_root,
            cwd=Path(tmp),
        )
    return {
        "run_wall_s_10x5": run["wall_s"],
        **stage_seconds(run["lines"], run["wall_s"]),
    }


def warm_runs() -> list[float]:
    """Wall time of each of :data:`WARM_RUNS` runs through one warm engine."""
    with tempfile.TemporaryDirectory(prefix="fedge-bench-") as tmp:
        run = timed_lines(
            [
                sys.executable,
                "-c",
                _WARM,
                str(WARM_RUNS),
                str(ROUNDS),
                str(CLIENTS),
                tmp,
            ],
            app_root=REPO_ROOT,
            cwd=Path(tmp),
        )
    walls = next(text for _, text in run["lines"] if text.startswith("WALLS "))
    return [float(w) for w in walls.split()[1:]]


def demo_run(app_root: Path) -> dict[str, float]:
    """Time ``python -m fedge.simulations.demo`` of the tree ``app_root``."""
    with tempfile.TemporaryDirectory(prefix="fedge-bench-") as tmp:
        run = timed_lines(
            [sys.executable, "-m", "fedge.simulations.demo"],
            app_root=app_root,
            cwd=Path(tmp),
        )
    result = next(
        (stamp for stamp, text in run["lines"] if _DEMO_RESULT.search(text)), None
    )
    return {
        "demo_wall_s": run["wall_s"],
        "demo_result_s": float("nan") if result is None else result,
    }


def main(baseline: Path | None = None) -> dict[str, Any]:
    """Time the runs (this tree, and the baseline's if given); return the figures."""
    figures: dict[str, Any] = {
        "name": "startup",
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "targets": TARGETS,
    }
    trees = {"": REPO_ROOT} | ({"before_": baseline} if baseline else {})
    for prefix, tree in trees.items():
        for key, value in simulate_run(tree).items():
            figures[prefix + key] = round(value, 2)
    walls = warm_runs()
    figures["run_wall_s_10x5_warm_first"] = round(walls[0], 2)
    figures["run_wall_s_10x5_warm"] = round(statistics.median(walls[1:]), 2)
    for prefix, tree in trees.items():
        for key, value in demo_run(tree).items():
            figures[prefix + key] = round(value, 2)
    figures["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    figures["targets_met"] = {
        key: bool(figures[key] <= target) for key, target in TARGETS.items()
    }
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="fedge tree timed as 'before'")
    print(json.dumps(main(parser.parse_args().baseline), indent=2))

"""What a round costs in a real secure deployment, against its own training (issue 10).

In one run on this machine, the same configuration (3 nodes, digits split in 3,
DP-SGD at ε = 8 over the run, 1 local epoch, batch 32):

- **deployment**: a real ``flower-superlink`` with TLS and SuperNode
  authentication and three registered ``flower-supernode`` processes started by
  ``fedge node start``, on 127.0.0.1 (the e2e tests' harness,
  ``tests/e2e/deployment.py``); ``flwr run`` submits the production app. Round
  wall time from the run's ``metrics.csv`` without the per-client evaluation
  that ends a run (one more message to every node, reported apart), steady
  state = rounds after the first;
- **simulation**: ``fedge simulate`` with the same settings and 3 virtual clients;
- **pure training** of each node: the ClientApp's own training call on that
  node's data, timed in this process, and fedge's own work around it in the
  warm ClientApp handler (``benchmarks.simulation_overhead.profile_clients``);
- **overhead per round** = deployment round wall − the slowest node's training
  (the nodes train in parallel, so the slowest one bounds a perfect round);
- **Flower's floor**: the same deployment (same nodes, TLS, auth) running a
  minimal app whose ClientApp only echoes arrays of the model's size, so its
  round is what Flower itself costs (message polling, one new ``flwr-clientapp``
  process per message, transfer); deployment − floor is fedge's share;
- **ClientApp import** in a fresh interpreter (``benchmarks.clientapp_import``):
  what every node pays per message, since Flower starts a new ``flwr-clientapp``
  process for each;
- **bytes per client per round**: the serialised Flower ``Message`` (protobuf,
  as sent over gRPC, before TLS framing) of a train request as the ServerApp
  builds it and of the ClientApp's real reply, the larger of the two, against
  the model's own size (float32 arrays).

Targets (issue 10): overhead ≤ 2.5 s per round, ClientApp import ≤ 2.0 s, bytes
per client per round ≤ 1.05 × the model size (each direction).

Run: ``python -m benchmarks deployment_round``.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.clientapp_import import import_seconds
from benchmarks.simulation_overhead import (
    profile_clients,
    round_figures,
    run_simulation,
)
from shared.run_folder import (
    COMPLETE,
    METRICS_CSV_FILE,
    read_status,
)

NUM_NODES = 3
NUM_ROUNDS = 4  # the first pays for start-up; three steady rounds
SETTINGS: dict[str, Any] = {
    "dp-mode": "sample",
    "noise-multiplier": 0.0,
    "target-epsilon": 8.0,
    "local-epochs": 1,
    "batch-size": 32,
    "num-server-rounds": NUM_ROUNDS,
    "min-nodes": NUM_NODES,
}
TARGETS = {
    "overhead_per_round_s": 2.5,
    "clientapp_import_s": 2.0,
    "bytes_ratio_to_model": 1.05,
}


# Flower's own cost per round: the same deployment running a minimal app whose
# ClientApp only echoes the arrays it receives (the size of fedge's model), so
# every second of its round is Flower's (polling, process start, transfer).
_FLOOR_PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "floor"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "fedge-bench"

[tool.flwr.app.components]
serverapp = "floor_app:server"
clientapp = "floor_app:client"

[tool.flwr.app.config]
num-server-rounds = 4
num-floats = 1
times-file = ""
"""
_FLOOR_APP = """
import json, time
import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

client = ClientApp()
server = ServerApp()


@client.train()
def train(msg, context):
    content = RecordDict({"arrays": msg.content["arrays"],
                          "metrics": MetricRecord({"num-examples": 1})})
    return Message(content=content, reply_to=msg)


@server.main()
def main(grid: Grid, context) -> None:
    config = context.run_config
    arrays = ArrayRecord([np.zeros(int(config["num-floats"]), dtype=np.float32)])
    times = []
    for server_round in range(1, int(config["num-server-rounds"]) + 1):
        started = time.monotonic()
        nodes = list(grid.get_node_ids())
        messages = [Message(RecordDict({"arrays": arrays}), dst_node_id=n,
                            message_type="train", group_id=str(server_round))
                    for n in nodes]
        replies = list(grid.send_and_receive(messages, timeout=300))
        assert all(not r.has_error() for r in replies), replies
        times.append(time.monotonic() - started)
    with open(config["times-file"], "w") as f:
        json.dump(times, f)
"""


def flower_floor_round_times(
    federation: Any, workdir: Path, model_bytes: int
) -> list[float]:
    """Round times of the minimal echo app on ``federation``'s nodes."""
    from simulations.flower_processes import flwr_run_command, write_run_config

    app = workdir / "floor"
    app.mkdir()
    (app / "pyproject.toml").write_text(_FLOOR_PYPROJECT)
    (app / "floor_app.py").write_text(_FLOOR_APP)
    times_file = workdir / "floor-times.json"
    settings = {
        "num-server-rounds": NUM_ROUNDS,
        "num-floats": model_bytes // 4,
        "times-file": str(times_file),
    }
    done = subprocess.run(
        flwr_run_command(app, write_run_config(workdir / "floor.toml", settings)),
        env=federation.link.env,
        cwd=app,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if not times_file.is_file():
        raise RuntimeError(f"the echo app did not finish:\n{done.stdout[-2000:]}")
    return [float(t) for t in json.loads(times_file.read_text())]


def deployment_round_times(
    model_bytes: int,
) -> tuple[list[float], list[float], float]:
    """Return round wall times of a 3-node TLS + auth + DP deployment on loopback.

    fedge's app first (each round without its per-client evaluation), then the
    minimal echo app on the same nodes; last, the seconds of the per-client
    evaluation that ended fedge's run.
    """
    from tests.e2e.deployment import secure_federation, submit_run

    with tempfile.TemporaryDirectory(prefix="fedge-bench-deploy-") as tmp:
        workdir = Path(tmp)
        overrides = {
            **SETTINGS,
            "output-dir": str(workdir / "runs"),
            "run-name": "bench",
            "node-wait-timeout-s": 120.0,
            "round-timeout-s": 300.0,
        }
        with secure_federation(workdir, NUM_NODES) as federation:
            for node in federation.nodes:
                federation.start(node)
            done = submit_run(federation.link, workdir, overrides, timeout_s=900)
            run_dir = federation.run_dir(overrides)
            status = read_status(run_dir)
            if status.get("state") != COMPLETE:
                raise RuntimeError(
                    f"deployment run did not complete: {status}\n{done.stdout[-2000:]}"
                )
            metrics = pd.read_csv(run_dir / METRICS_CSV_FILE)
            floor = flower_floor_round_times(federation, workdir, model_bytes)
    times, run_figures = round_figures(metrics)
    return times, floor, run_figures["client_evaluation_s"]


def main() -> dict[str, Any]:
    """Run the deployment and the simulation, profile the nodes, return figures."""
    profile = profile_clients(SETTINGS, NUM_NODES)
    deployment, floor, client_evaluation_s = deployment_round_times(profile.model_bytes)
    simulation = run_simulation(SETTINGS, NUM_NODES)
    import_s, heavy = import_seconds()
    deployment_round_s = sum(deployment[1:]) / len(deployment[1:])
    floor_round_s = sum(floor[1:]) / len(floor[1:])
    slowest_training_s = max(profile.train_s)
    bytes_per_client = max(profile.request_bytes, profile.reply_bytes)
    figures: dict[str, Any] = {
        "name": "deployment_round",
        "nodes": NUM_NODES,
        "rounds": NUM_ROUNDS,
        "settings": SETTINGS,
        "deployment_round_s": round(deployment_round_s, 3),
        "deployment_first_round_s": round(deployment[0], 3),
        "deployment_round_times_s": [round(t, 3) for t in deployment],
        "deployment_client_evaluation_s": round(client_evaluation_s, 3),
        "flower_floor_round_s": round(floor_round_s, 3),
        "flower_floor_round_times_s": [round(t, 3) for t in floor],
        "fedge_over_floor_per_round_s": round(deployment_round_s - floor_round_s, 3),
        "simulation_round_s": round(simulation.steady_round_s, 3),
        "simulation_first_round_s": round(simulation.first_round_s, 3),
        "node_training_s": [round(t, 4) for t in profile.train_s],
        "node_fedge_work_s": [round(t, 4) for t in profile.fedge_s],
        "overhead_per_round_s": round(deployment_round_s - slowest_training_s, 3),
        "clientapp_import_s": round(import_s, 3),
        "clientapp_heavy_modules": heavy,
        "model_bytes": profile.model_bytes,
        "request_bytes_per_client_per_round": profile.request_bytes,
        "reply_bytes_per_client_per_round": profile.reply_bytes,
        # The larger direction: each client receives one request and sends one reply.
        "bytes_per_client_per_round": bytes_per_client,
        "bytes_ratio_to_model": round(bytes_per_client / profile.model_bytes, 4),
        "targets": TARGETS,
    }
    figures["targets_met"] = {
        key: bool(figures[key] <= target) for key, target in TARGETS.items()
    }
    return figures


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))

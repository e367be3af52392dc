"""What a round costs in a real secure deployment, against its own training (issue 10).

In one run on this machine, the same configuration (3 nodes, digits split in 3,
DP-SGD at ε = 8 over the run, 1 local epoch, batch 32):

- **deployment**: a real ``flower-superlink`` with TLS and SuperNode
  authentication and three registered ``flower-supernode`` processes started by
  ``fedge node start``, on 127.0.0.1 (the e2e tests' harness,
  ``tests/e2e/deployment.py``); ``flwr run`` submits the production app. Round
  wall time from the run's ``metrics.csv``, steady state = rounds after the first;
- **simulation**: ``fedge simulate`` with the same settings and 3 virtual clients;
- **pure training** of each node: the ClientApp's own training call on that
  node's data, timed in this process, and fedge's own work around it in the
  warm ClientApp handler (``benchmarks.simulation_overhead.profile_clients``);
- **overhead per round** = deployment round wall − the slowest node's training
  (the nodes train in parallel, so the slowest one bounds a perfect round);
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
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.clientapp_import import import_seconds
from benchmarks.simulation_overhead import profile_clients, run_simulation
from shared.run_folder import (
    COMPLETE,
    METRICS_CSV_FILE,
    ROUND,
    ROUND_TIME_S,
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


def deployment_round_times() -> list[float]:
    """Round wall times of a 3-node TLS + auth + DP deployment on loopback."""
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
    rounds = metrics[metrics[ROUND] > 0]
    return [float(t) for t in rounds[ROUND_TIME_S]]


def main() -> dict[str, Any]:
    """Run the deployment and the simulation, profile the nodes, return figures."""
    deployment = deployment_round_times()
    simulation = run_simulation(SETTINGS, NUM_NODES)
    profile = profile_clients(SETTINGS, NUM_NODES)
    import_s, heavy = import_seconds()
    deployment_round_s = sum(deployment[1:]) / len(deployment[1:])
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

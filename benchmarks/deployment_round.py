"""What a round costs in a real secure deployment, against its own training (issue 10).

In one run on this machine, the same configuration (3 nodes, digits split in 3,
DP-SGD at ε = 8 over the run, 1 local epoch, batch 32):

- **deployment**: a real ``flower-superlink`` with TLS and SuperNode
  authentication and three registered ``flower-supernode`` processes started by
  ``fedge node start``, on 127.0.0.1 (the e2e tests' harness,
  ``tests/e2e/deployment.py``); ``flwr run`` submits the production app. Round
  wall time from the run's ``metrics.csv`` without the per-client evaluation
  that ends a run (one more message to every node, reported apart), steady
  state = rounds after the first. Run twice on the same SuperLink: with the
  SuperExec task poll interval ``fedge node start`` sets (after) and with
  Flower's own 1 s (before);
- **one node** (node 0 alone, the same third of the data, ``min-nodes = 1``):
  what a round costs when a node has the machine to itself, as in a real
  federation (3 nodes on 2 cores compete for them). Once per SuperExec task
  poll interval in :data:`POLL_INTERVALS_S` (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``,
  the one wait on a node's message path Flower 1.42 lets a user set), with the
  CPU the idle node then uses (the polling's cost); these runs have no
  per-client evaluation, so their traffic is the train messages alone;
- **simulation**: ``fedge simulate`` with the same settings and 3 virtual clients;
- **pure training** of each node: the ClientApp's own training call on that
  node's data, timed in this process, and fedge's own work around it in the
  warm ClientApp handler (``benchmarks.simulation_overhead.profile_clients``);
- **overhead per round** = deployment round wall − the slowest node's training
  (the nodes train in parallel, so the slowest one bounds a perfect round);
- **Flower's floor**: the same deployment (the same nodes, TLS, auth, at the
  poll interval ``fedge node start`` sets) running a minimal app whose ClientApp only echoes arrays of the model's size, so its
  round is what Flower itself costs (message polling, one new ``flwr-clientapp``
  process per message, transfer); deployment − floor is fedge's share;
- **ClientApp import** in a fresh interpreter (``benchmarks.clientapp_import``):
  what every node pays per message, since Flower starts a new ``flwr-clientapp``
  process for each;
- **bytes per client per round**: Flower's own count of what the SuperLink sent
  to and received from the nodes over the Fleet API in the one-node DP runs
  (message envelopes and every object of a message's content, before gRPC and
  TLS framing; ``flwr ls --format json``, "network-traffic"), divided by the
  rounds: the real train request, privacy-record fields included, and the real
  reply; the larger of the two against the model's own size (float32 arrays).
  The same for the echo app's requests (Flower's own envelope around a
  model-sized array), and, for comparison, the request as built in this
  process without the record fields.

Targets (issue 10): overhead ≤ 2.5 s per round, ClientApp import ≤ 2.0 s, bytes
per client per round ≤ 1.05 × the model size (each direction).

Run: ``python -m benchmarks deployment_round``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.clientapp_import import import_seconds
from benchmarks.minimal_app import app_pyproject
from benchmarks.simulation_overhead import (
    profile_clients,
    round_figures,
    run_simulation,
)
from fedge.client.supernode_launch import (
    TASK_POLL_INTERVAL_S,
    TASK_POLL_INTERVAL_VARIABLE,
)
from fedge.shared.run_folder import (
    COMPLETE,
    METRICS_CSV_FILE,
    read_status,
)

NUM_NODES = 3
NUM_ROUNDS = 4  # the first pays for start-up; three steady rounds
SINGLE_NODE_ROUNDS = 5  # four steady rounds per poll interval: a node alone is quick
FLOWER_POLL_INTERVAL_S = 1.0  # flwr 1.42's own default: the "before"
# SuperExec task poll intervals measured with one node (s), longest first;
# always Flower's and the one `fedge node start` sets.
POLL_INTERVALS_S = tuple(
    sorted({FLOWER_POLL_INTERVAL_S, 0.2, 0.05, TASK_POLL_INTERVAL_S}, reverse=True)
)
IDLE_CPU_WINDOW_S = 5.0
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
_FLOOR_CONFIG = {"num-server-rounds": 4, "num-floats": 1, "times-file": ""}
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
    from fedge.simulations.flower_processes import flwr_run_command, write_run_config

    app = workdir / "floor"
    app.mkdir()
    (app / "pyproject.toml").write_text(app_pyproject("floor_app", _FLOOR_CONFIG))
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


@dataclass(frozen=True)
class Traffic:
    """Flower's count of one run's Fleet API bytes, on the SuperLink's side.

    ``sent_bytes`` went to the nodes (``outbound-bytes``: messages pulled and
    their content objects), ``received_bytes`` came from them (``inbound-bytes``:
    replies pushed and their objects).
    """

    sent_bytes: int
    received_bytes: int


@dataclass
class DeployedRun:
    """One ``flwr run`` of fedge's app on the secure deployment, as measured."""

    round_times_s: list[float]  # each round without its per-client evaluation
    client_evaluation_s: float  # the per-client evaluation ending the run (0: none)
    traffic: Traffic
    idle_node_cpu: float = 0.0  # CPU cores the idle nodes used just after the run

    @property
    def steady_round_s(self) -> float:
        """Mean round time after the first (which pays for start-up)."""
        steady = self.round_times_s[1:]
        return sum(steady) / len(steady)


def parse_run_traffic(text: str) -> dict[str, Traffic]:
    """Return each run's traffic from ``flwr ls --format json`` output, by run id."""
    reply = json.loads(text[text.index("{") :])
    return {
        str(run["run-id"]): Traffic(
            sent_bytes=int(run["network-traffic"]["outbound-bytes"]),
            received_bytes=int(run["network-traffic"]["inbound-bytes"]),
        )
        for run in reply["runs"]
    }


def new_run_traffic(
    before: Mapping[str, Traffic], after: Mapping[str, Traffic]
) -> Traffic:
    """Return the traffic of the one run listed in ``after`` but not ``before``.

    Raises
    ------
    RuntimeError
        When not exactly one run is new (then which run sent what is unknown).
    """
    new = sorted(set(after) - set(before))
    if len(new) != 1:
        raise RuntimeError(
            f"expected exactly one new Flower run after flwr run, got {new}: "
            "its traffic cannot be told apart"
        )
    return after[new[0]]


def flower_runs_traffic(link: Any) -> dict[str, Traffic]:
    """Every run's traffic as ``link``'s SuperLink counted it (``flwr ls``)."""
    from fedge.simulations.flower_processes import CONNECTION, STARTUP_TIMEOUT_S

    done = subprocess.run(
        ["flwr", "ls", CONNECTION, "--format", "json"],
        env=link.env,
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT_S,
        check=True,
    )
    return parse_run_traffic(done.stdout)


@contextlib.contextmanager
def task_poll_interval(interval_s: float | None) -> Iterator[None]:
    """Set the SuperExec task poll interval nodes started inside the block get.

    None leaves the variable unset, so ``fedge node start`` applies its own
    default. The nodes' environment is built from this process's, which is
    restored afterwards.
    """
    saved = os.environ.pop(TASK_POLL_INTERVAL_VARIABLE, None)
    if interval_s is not None:
        os.environ[TASK_POLL_INTERVAL_VARIABLE] = repr(interval_s)
    try:
        yield
    finally:
        os.environ.pop(TASK_POLL_INTERVAL_VARIABLE, None)
        if saved is not None:
            os.environ[TASK_POLL_INTERVAL_VARIABLE] = saved


def session_cpu_s(sessions: list[int]) -> float:
    """CPU seconds used so far by every process in ``sessions`` (Linux ``/proc``).

    User and system time of each live process and of the children it has
    already reaped.
    """
    from fedge.simulations.flower_processes import session_members

    ticks = 0
    for session in sessions:
        for pid in session_members(session):
            try:
                text = Path(f"/proc/{pid}/stat").read_text()
            except OSError:  # ended meanwhile
                continue
            fields = text.rsplit(")", 1)[-1].split()
            # After the name: fields 3.. of proc(5); utime, stime, cutime, cstime
            # are fields 14-17.
            ticks += sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def idle_cpu_cores(sessions: list[int], window_s: float = IDLE_CPU_WINDOW_S) -> float:
    """Mean CPU cores ``sessions`` use over ``window_s`` seconds from now."""
    started, cpu = time.monotonic(), session_cpu_s(sessions)
    time.sleep(window_s)
    return (session_cpu_s(sessions) - cpu) / (time.monotonic() - started)


def run_fedge(
    federation: Any,
    workdir: Path,
    overrides: Mapping[str, Any],
    *,
    idle_cpu_of: list[int] | None = None,
) -> DeployedRun:
    """Submit fedge's app with ``overrides`` to the running nodes; measure the run.

    ``idle_cpu_of``, when given, are the running nodes' process sessions, whose
    CPU use is measured once the run has ended and they are idle.

    Raises
    ------
    RuntimeError
        When the run did not complete.
    """
    from tests.e2e.deployment import submit_run

    before = flower_runs_traffic(federation.link)
    done = submit_run(federation.link, workdir, overrides, timeout_s=900)
    run_dir = federation.run_dir(overrides)
    status = read_status(run_dir)
    if status.get("state") != COMPLETE:
        raise RuntimeError(
            f"deployment run {overrides['run-name']} did not complete: {status}\n"
            f"{done.stdout[-2000:]}"
        )
    times, run_figures = round_figures(pd.read_csv(run_dir / METRICS_CSV_FILE))
    traffic = new_run_traffic(before, flower_runs_traffic(federation.link))
    return DeployedRun(
        times,
        run_figures["client_evaluation_s"],
        traffic,
        idle_node_cpu=idle_cpu_cores(idle_cpu_of) if idle_cpu_of else 0.0,
    )


@contextlib.contextmanager
def started_nodes(
    federation: Any, count: int, *, poll_interval_s: float | None
) -> Iterator[list[int]]:
    """Start the first ``count`` nodes; yield their sessions; stop them after.

    Afterwards waits until the SuperLink lists them offline, so that a later
    run with fewer nodes does not sample a node that is gone.
    """
    from tests.e2e.deployment import supernode_states, wait_for

    nodes = federation.nodes[:count]
    with task_poll_interval(poll_interval_s):
        sessions = [federation.start(node).pid for node in nodes]
    try:
        yield sessions
    finally:
        for node in nodes:
            federation.stop(node)
        wait_for(
            lambda: all(
                supernode_states(federation.link).get(node.node_id) != "online"
                for node in nodes
            ),
            timeout_s=120,
            what="stopped nodes listed offline",
        )


@dataclass
class DeploymentFigures:
    """Everything measured on the secure deployment, in one run."""

    after: DeployedRun  # 3 nodes, fedge node start's poll interval
    before: DeployedRun  # 3 nodes, Flower's 1 s
    floor_round_times_s: list[float]
    floor_traffic: Traffic
    single_node: dict[float, DeployedRun]  # by poll interval (s)


def measure_deployment(model_bytes: int) -> DeploymentFigures:
    """Run fedge's app and the echo app on a TLS + auth deployment on loopback.

    Three nodes at Flower's poll interval (before), three at the one
    ``fedge node start`` sets (after) and the echo app on those, then node 0
    alone at each of :data:`POLL_INTERVALS_S`.
    """
    from tests.e2e.deployment import secure_federation

    with tempfile.TemporaryDirectory(prefix="fedge-bench-deploy-") as tmp:
        workdir = Path(tmp)

        def overrides(name: str, **extra: Any) -> dict[str, Any]:
            return {
                **SETTINGS,
                "output-dir": str(workdir / "runs"),
                "run-name": name,
                "node-wait-timeout-s": 120.0,
                "round-timeout-s": 300.0,
                **extra,
            }

        with secure_federation(workdir, NUM_NODES) as federation:
            with started_nodes(
                federation, NUM_NODES, poll_interval_s=FLOWER_POLL_INTERVAL_S
            ):
                before = run_fedge(federation, workdir, overrides("before"))
            with started_nodes(federation, NUM_NODES, poll_interval_s=None):
                after = run_fedge(federation, workdir, overrides("after"))
                floor_before = flower_runs_traffic(federation.link)
                floor = flower_floor_round_times(federation, workdir, model_bytes)
                floor_traffic = new_run_traffic(
                    floor_before, flower_runs_traffic(federation.link)
                )
            single_node = {}
            for interval_s in POLL_INTERVALS_S:
                with started_nodes(
                    federation, 1, poll_interval_s=interval_s
                ) as sessions:
                    # No per-client evaluation: the run's traffic is its rounds'.
                    single_node[interval_s] = run_fedge(
                        federation,
                        workdir,
                        overrides(
                            f"one-node-{interval_s:g}",
                            **{
                                "min-nodes": 1,
                                "num-server-rounds": SINGLE_NODE_ROUNDS,
                                "fairness-report": False,
                            },
                        ),
                        idle_cpu_of=sessions,
                    )
    return DeploymentFigures(after, before, floor, floor_traffic, single_node)


def main() -> dict[str, Any]:
    """Run the deployment and the simulation, profile the nodes, return figures."""
    profile = profile_clients(SETTINGS, NUM_NODES)
    deployed = measure_deployment(profile.model_bytes)
    simulation = run_simulation(SETTINGS, NUM_NODES)
    import_s, heavy = import_seconds()
    after, floor = deployed.after, deployed.floor_round_times_s
    deployment_round_s = after.steady_round_s
    floor_round_s = sum(floor[1:]) / len(floor[1:])
    slowest_training_s = max(profile.train_s)
    # Bytes of a real DP round: the one-node runs carry train messages only.
    own_default = deployed.single_node[TASK_POLL_INTERVAL_S]
    request_bytes = own_default.traffic.sent_bytes // SINGLE_NODE_ROUNDS
    reply_bytes = own_default.traffic.received_bytes // SINGLE_NODE_ROUNDS
    floor_messages = NUM_ROUNDS * NUM_NODES
    bytes_per_client = max(request_bytes, reply_bytes)
    # Compared with the targets unrounded: 1.05004 is not within 1.05.
    against_targets = {
        "overhead_per_round_s": deployment_round_s - slowest_training_s,
        "clientapp_import_s": import_s,
        "bytes_ratio_to_model": bytes_per_client / profile.model_bytes,
    }
    figures: dict[str, Any] = {
        "name": "deployment_round",
        "nodes": NUM_NODES,
        "rounds": NUM_ROUNDS,
        "settings": SETTINGS,
        "task_poll_interval_s": TASK_POLL_INTERVAL_S,
        "deployment_round_s": round(deployment_round_s, 3),
        "deployment_first_round_s": round(after.round_times_s[0], 3),
        "deployment_round_times_s": [round(t, 3) for t in after.round_times_s],
        "deployment_client_evaluation_s": round(after.client_evaluation_s, 3),
        "deployment_flower_poll_round_s": round(deployed.before.steady_round_s, 3),
        "deployment_flower_poll_round_times_s": [
            round(t, 3) for t in deployed.before.round_times_s
        ],
        "deployment_round_ratio_to_flower_poll": round(
            deployment_round_s / deployed.before.steady_round_s, 3
        ),
        "single_node_rounds": SINGLE_NODE_ROUNDS,
        "single_node_round_s": round(own_default.steady_round_s, 3),
        "single_node_round_s_by_poll_interval": {
            f"{interval:g}": round(run.steady_round_s, 3)
            for interval, run in deployed.single_node.items()
        },
        "single_node_round_times_s_by_poll_interval": {
            f"{interval:g}": [round(t, 3) for t in run.round_times_s]
            for interval, run in deployed.single_node.items()
        },
        "idle_node_cpu_cores_by_poll_interval": {
            f"{interval:g}": round(run.idle_node_cpu, 4)
            for interval, run in deployed.single_node.items()
        },
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
        "request_bytes_per_client_per_round": request_bytes,
        "reply_bytes_per_client_per_round": reply_bytes,
        # The larger direction: each client receives one request and sends one reply.
        "bytes_per_client_per_round": bytes_per_client,
        "bytes_ratio_to_model": round(bytes_per_client / profile.model_bytes, 4),
        # Flower's own envelope around a model-sized array. (Not its reply: the
        # echo sends back objects the SuperLink still holds, which are not resent.)
        "flower_floor_request_bytes": deployed.floor_traffic.sent_bytes
        // floor_messages,
        # Built in this process, without the privacy-record fields (earlier figure).
        "in_process_request_bytes": profile.request_bytes,
        "in_process_reply_bytes": profile.reply_bytes,
        "targets": TARGETS,
    }
    figures["targets_met"] = {
        key: bool(against_targets[key] <= target) for key, target in TARGETS.items()
    }
    return figures


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))

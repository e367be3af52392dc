"""How close a simulated round comes to the cost of its own training (issue 9).

For each case, in one run on this machine:

- **round wall time**: a real ``fedge simulate`` (Flower's simulation engine,
  the production ServerApp and ClientApp), steady state = median of the rounds
  after the first, from the run folder's ``metrics.csv``, without the per-client
  evaluation that ends a run (``client-evaluation-s``, the model scored on every
  node), which is reported on its own line: ``client_evaluation_s_*`` and, at
  1,000 clients, ``scale1000_client_evaluation_s`` and its ratio to a round;
- **pure compute**: the same clients' training (same partitions, same model,
  same training function as the ClientApp: ``train_plain``, or for DP the
  DP-SGD loop ``train_private``), timed in this process with one torch thread
  each (best of two, in thread CPU seconds, which other processes on a shared
  machine do not inflate), summed, ÷ the number of clients the engine runs at
  once (cores ÷ ``cpus-per-client``);
- their **ratio** (1.0 = a round costs exactly its training);
- **start-up**: from calling ``simulate`` until the ServerApp logs round 0, plus
  what the first round costs over a steady one (starting the engine's workers
  and their first imports);
- **peak memory** summed over the simulating process tree.

Where the rest goes, per client message (ms of a client slot): fedge's own work
in the ClientApp (its handler timed in-process with warm caches, minus the
training inside it), Flower's serialisation of the request and the reply
(``message_to_proto`` both ways), the server's per-round work (central
evaluation), and the engine (the remainder: scheduling, Ray, the SuperLink).

The yardstick: a minimal Flower app with the same model, clients and training
call (:mod:`benchmarks.minimal_app`: a ClientApp that trains, Flower's own
FedAvg loop with central evaluation), run on the same engine path in the same
run, for the 10- and 100-client cases: ``minimal_ratio_*`` beside fedge's
``ratio_*`` (its round is timed from one central evaluation to the next, so it
includes everything; fedge's ``round-time-s`` leaves out the round's metrics
row and checkpoint, 5-20 ms, timed as ``round_end`` in docs/performance.md).

``--baseline DIR`` also runs the simulations with the fedge source tree in
``DIR`` (e.g. a ``git worktree`` of an older commit), for a before/after in one
run; the pure compute is the same for both.

Run: ``python -m benchmarks simulation_overhead`` (or
``python -m benchmarks.simulation_overhead [--baseline DIR]``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmarks.clientapp_import import REPO_ROOT, import_seconds
from benchmarks.minimal_app import minimal_round_times
from benchmarks.process_memory import PeakMemorySampler
from fedge.shared.run_folder import (
    CENTRAL_ACCURACY,
    CLIENT_EVALUATION_S,
    CLIENTS_EVALUATED,
    METRICS_CSV_FILE,
    ROUND,
    ROUND_TIME_S,
)

# Round 1 pays start-up; rounds 2-8 are the steady state. Their median: with
# only 3 steady rounds one slow round (other work on a shared machine) moved a
# case by 50 % between two runs of the same tree.
ROUNDS = 8
CPUS_PER_CLIENT = 1
# make demo's DP settings (simulations/demo.py), over ROUNDS rounds and no export.
DP_SETTINGS = {
    "dp-mode": "sample",
    "target-epsilon": 8.0,
    "activation": "tanh",
    "local-epochs": 5,
    "learning-rate": 0.05,
}
CASES: dict[str, tuple[int, dict[str, Any]]] = {
    "10x5": (10, {"local-epochs": 5}),
    "10x5_dp": (10, DP_SETTINGS),
    "100x5": (100, {"local-epochs": 5}),
}
# The cases the minimal Flower app (the engine's floor) also runs.
MINIMAL_CASES = ("10x5", "100x5")
TARGETS = {"ratio_10x5": 1.3, "ratio_10x5_dp": 1.3, "ratio_100x5": 2.0, "startup_s": 6}
SCALE_SCENARIO = "scale-1000"
_ROUND_LINE = re.compile(r"round 0/\d+")
# In-process timings are this thread's CPU seconds (torch runs one thread): on
# an idle machine the same as wall time, and not inflated when other processes
# share the cores.
_clock = time.thread_time
# Run in a fresh interpreter against a given source tree (this one or a baseline).
_SIMULATE = """
import json, sys, time
from pathlib import Path
from fedge.simulations.simulate import simulate
overrides, clients, out = json.loads(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
def echo(*parts):
    print(f"{time.monotonic():.3f}", *parts, flush=True)
run_dir = simulate(overrides, num_clients=clients, output_dir=out, run_name="bench",
                   verbose=True, echo=echo)
print("RUN_DIR", run_dir, flush=True)
"""


@dataclass
class SimulatedRun:
    """Figures of one ``fedge simulate`` run."""

    round_times_s: list[float]  # without the per-client evaluation in them
    server_ready_s: float  # from start until the ServerApp logged round 0
    total_s: float
    peak_memory_mib: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def first_round_s(self) -> float:
        """Wall time of round 1 (start-up costs included)."""
        return self.round_times_s[0]

    @property
    def steady_round_s(self) -> float:
        """Median wall time of the rounds after the first."""
        # Median: one round slowed by another process on a shared machine is
        # not the engine's cost.
        return float(np.median(self.round_times_s[1:]))

    @property
    def startup_s(self) -> float:
        """Seconds until the server was ready, plus round 1's excess over steady."""
        return self.server_ready_s + max(0.0, self.first_round_s - self.steady_round_s)


def run_simulation(
    overrides: dict[str, Any], clients: int, *, app_root: Path = REPO_ROOT
) -> SimulatedRun:
    """One ``fedge simulate`` in a subprocess using the fedge tree ``app_root``."""
    env = {**os.environ, "PYTHONPATH": str(app_root)}
    with tempfile.TemporaryDirectory(prefix="fedge-bench-") as tmp:
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-c", _SIMULATE, json.dumps(overrides), str(clients), tmp],
            cwd=app_root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        server_ready, run_dir = None, None
        tail: list[str] = []
        with PeakMemorySampler(root_pid=process.pid) as memory:
            assert process.stdout is not None
            for line in process.stdout:
                tail = [*tail[-30:], line]
                stamp, _, text = line.partition(" ")
                if server_ready is None and _ROUND_LINE.search(text):
                    server_ready = float(stamp) - started
                if line.startswith("RUN_DIR "):
                    run_dir = Path(line.split(" ", 1)[1].strip())
            process.wait()
        total = time.monotonic() - started
        if process.returncode != 0 or run_dir is None:
            raise RuntimeError(
                f"simulation failed (exit {process.returncode}):\n" + "".join(tail)
            )
        metrics = pd.read_csv(run_dir / METRICS_CSV_FILE)
    round_times_s, extra = round_figures(metrics)
    return SimulatedRun(
        round_times_s=round_times_s,
        server_ready_s=float(server_ready if server_ready is not None else np.nan),
        total_s=total,
        peak_memory_mib=memory.peak_bytes / 2**20,
        extra=extra,
    )


def round_figures(metrics: pd.DataFrame) -> tuple[list[float], dict[str, Any]]:
    """Each round's time without its per-client evaluation, and the run's figures.

    The end-of-run evaluation of every node is not a round's training cost: it
    is timed apart (in a 3-round run it would otherwise be half the median).
    """
    rounds = metrics[metrics[ROUND] > 0]
    evaluation_s = _column(rounds, CLIENT_EVALUATION_S)
    times = rounds[ROUND_TIME_S].to_numpy(dtype=float) - evaluation_s
    return [float(t) for t in times], {
        "final_accuracy": float(rounds[CENTRAL_ACCURACY].iloc[-1]),
        "client_evaluation_s": float(evaluation_s[-1]),
        "clients_evaluated": int(_column(rounds, CLIENTS_EVALUATED)[-1]),
    }


def _column(rounds: pd.DataFrame, name: str) -> np.ndarray:
    """Return a metrics column as floats, 0 where a round has none."""
    if name not in rounds:
        return np.zeros(len(rounds))
    return np.asarray(rounds[name].fillna(0.0), dtype=float)


@dataclass
class ComputeProfile:
    """Per-client costs measured in this process, one torch thread."""

    train_s: list[float]  # pure training per client
    fedge_s: list[float]  # warm ClientApp handler minus the training in it
    serialisation_s: float  # request + reply, to protobuf and back, per message
    central_eval_s: float  # the server's evaluation of one round
    request_bytes: int = 0  # one train request, serialised as sent over gRPC
    reply_bytes: int = 0  # the ClientApp's reply to it, serialised
    model_bytes: int = 0  # the model's arrays alone


def profile_clients(overrides: dict[str, Any], clients: int) -> ComputeProfile:
    """Time each client's training and the ClientApp handler around it.

    It changes this process while it runs (:func:`profiling_in_process`: one
    torch thread, a Flower task identity, timed training calls) and restores
    all of it when it returns or raises.
    """
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.app.typing import ConfigRecordValues
    from flwr.common import MessageType
    from flwr.common.serde import message_from_proto, message_to_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage

    from fedge.client.client_app import train as train_handler
    from fedge.client.node_data import load_node_data
    from fedge.server.reference_data import load_reference_data
    from fedge.server.starting_model import model_spec_for
    from fedge.shared import keys
    from fedge.shared.config import from_run_config
    from fedge.shared.evaluation import evaluate_model
    from fedge.shared.models import build_model
    from fedge.shared.records import record_scalar, state_dict_to_record

    inner_s: list[float] = []  # training inside the last handler call
    with (
        profiling_in_process(inner_s),
        tempfile.TemporaryDirectory(prefix="fedge-bench-state-") as state,
    ):
        flat = from_run_config(
            {**overrides, "node-state-dir": state}, fill_defaults=True
        ).to_flat()
        config = from_run_config(flat)
        reference = load_reference_data(config.data)
        spec = model_spec_for(config, reference.preprocessing)
        initial = build_model(spec, model_seed=config.train.model_seed).state_dict()

        def message(server_round: int) -> Message:
            server_config: dict[str, ConfigRecordValues] = {
                keys.SERVER_ROUND: server_round,
                keys.MODEL_SPEC: spec.to_json(),
                keys.PREPROCESSING: reference.preprocessing.to_json(),
                keys.FEDGE_RUN_ID: "bench",
            }
            content = RecordDict(
                {
                    keys.ARRAYS: state_dict_to_record(initial),
                    keys.CONFIG: ConfigRecord(server_config),
                }
            )
            return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)

        train_s, fedge_s = [], []
        for client in range(clients):
            node_config: dict[str, bool | float | int | str] = {
                keys.PARTITION_ID: client,
                keys.NUM_PARTITIONS: clients,
            }
            data = load_node_data(node_config, config.data, reference.preprocessing)
            context = Context(
                run_id=1,
                node_id=client + 1,
                node_config=node_config,
                state=RecordDict(),
                run_config=flat,
            )
            train_handler(message(1), context)  # warm: caches, plan, validation
            own_work = []
            for server_round in (2, 3):  # best of two: the machine is shared
                start = _clock()
                reply = train_handler(message(server_round), context)
                own_work.append(_clock() - start - inner_s[-1])
            fedge_s.append(min(own_work))
            figures = reply.content.metric_records[keys.METRICS]
            sigma = (
                float(record_scalar(figures, keys.NOISE_MULTIPLIER))
                if keys.NOISE_MULTIPLIER in figures
                else 0.0
            )
            train_s.append(
                min(
                    _time_training(config, spec, initial, data, sigma) for _ in range(2)
                )
            )
        request = message(4)
        start = _clock()
        sizes = []
        for sent in (request, reply):
            wire = message_to_proto(sent).SerializeToString()
            message_from_proto(ProtoMessage.FromString(wire))
            sizes.append(len(wire))
        serialisation_s = _clock() - start
        model = build_model(spec)
        start = _clock()
        evaluate_model(model, reference.x, reference.y)
        central_eval_s = _clock() - start
    return ComputeProfile(
        train_s,
        fedge_s,
        serialisation_s,
        central_eval_s,
        request_bytes=sizes[0],
        reply_bytes=sizes[1],
        model_bytes=int(request.content[keys.ARRAYS].count_bytes()),
    )


# What profile_clients times inside the ClientApp handler: its training calls.
TIMED_CALLS = (
    ("fedge.client.client_app", "train_plain"),
    ("fedge.client.private_round", "train_private"),
)


@contextlib.contextmanager
def profiling_in_process(durations: list[float]) -> Iterator[None]:
    """Set up this process to run ClientApp handlers, and undo it all on exit.

    Inside: torch runs one thread; Flower's task identity is set (messages
    built here need one, as inside a Flower process); the ClientApp's training
    calls (:data:`TIMED_CALLS`) append their duration to ``durations``, which
    separates fedge's own work in a handler call from the training inside it.
    On exit, normal or by an exception, the thread count, the identity (unset
    parts included) and the original functions are put back, so a caller (a
    test, say) leaves the process as it found it.
    """
    from flwr.supercore.task_identity import TaskIdentity

    threads = torch.get_num_threads()
    identity = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    targets = [(importlib.import_module(module), name) for module, name in TIMED_CALLS]
    originals = [getattr(module, name) for module, name in targets]
    try:
        torch.set_num_threads(1)
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        for (module, name), original in zip(targets, originals, strict=True):
            setattr(module, name, _timed(original, durations))
        yield
    finally:
        for (module, name), original in zip(targets, originals, strict=True):
            setattr(module, name, original)
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = identity
        torch.set_num_threads(threads)


def _timed(function: Callable[..., Any], durations: list[float]) -> Callable[..., Any]:
    """Wrap ``function`` so that each call appends its duration to ``durations``."""

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = _clock()
        try:
            return function(*args, **kwargs)
        finally:
            durations.append(_clock() - start)

    return timed


def _time_training(
    config: Any, spec: Any, initial: dict[str, torch.Tensor], data: Any, sigma: float
) -> float:
    """Seconds of the ClientApp's own training call for one client, nothing else."""
    from fedge.client.dp_training import train_private
    from fedge.client.training import train_plain
    from fedge.shared.models import build_model
    from fedge.shared.privacy_plan import local_schedule, plan_privacy

    model = build_model(spec)
    model.load_state_dict(initial)
    train = config.train
    sample_dp = config.dp.mode == "sample"
    schedule = local_schedule(config, num_examples=len(data.train))
    # The node's plan with the σ it reported (no calibration: σ > 0).
    plan = (
        plan_privacy(
            num_examples=len(data.train),
            batch_size=schedule.batch_size,
            local_epochs=schedule.local_epochs,
            rounds=config.run.num_server_rounds,
            noise_multiplier=sigma,
            target_epsilon=config.dp.target_epsilon,
            target_delta=config.dp.target_delta,
            accountant=config.dp.accountant,
        )
        if sample_dp
        else None
    )
    start = _clock()
    if plan is not None:
        train_private(
            model,
            data.train.x,
            data.train.y,
            noise_multiplier=sigma,
            sample_rate=plan.sample_rate,
            steps=plan.steps_per_round,
            learning_rate=train.learning_rate,
            momentum=train.momentum,
            max_grad_norm=config.dp.max_grad_norm,
            check_model=False,
        )
    else:
        train_plain(
            model,
            data.train.x,
            data.train.y,
            epochs=schedule.local_epochs,
            batch_size=schedule.batch_size,
            learning_rate=train.learning_rate,
            momentum=train.momentum,
            seed=train.model_seed * 100_003 + 2,
        )
    return _clock() - start


def concurrent_clients(clients: int) -> int:
    """How many virtual clients the engine runs at once on this machine."""
    return max(1, min(clients, (os.cpu_count() or 1) // CPUS_PER_CLIENT))


def case_figures(
    name: str, run: SimulatedRun, profile: ComputeProfile
) -> dict[str, Any]:
    """Ratio and the per-message split of one case."""
    clients = len(profile.train_s)
    slots = concurrent_clients(clients)
    compute_round_s = sum(profile.train_s) / slots
    overhead_round_s = run.steady_round_s - compute_round_s
    per_message_ms = overhead_round_s * slots / clients * 1e3
    fedge_ms = float(np.mean(profile.fedge_s)) * 1e3
    serialisation_ms = profile.serialisation_s * 1e3
    server_ms = profile.central_eval_s * slots / clients * 1e3
    return {
        f"ratio_{name}": round(run.steady_round_s / compute_round_s, 2),
        f"round_s_{name}": round(run.steady_round_s, 3),
        f"first_round_s_{name}": round(run.first_round_s, 2),
        f"compute_round_s_{name}": round(compute_round_s, 3),
        f"startup_s_{name}": round(run.startup_s, 2),
        f"peak_memory_mib_{name}": round(run.peak_memory_mib, 1),
        f"final_accuracy_{name}": round(run.extra["final_accuracy"], 4),
        f"client_evaluation_s_{name}": round(run.extra["client_evaluation_s"], 2),
        f"overhead_per_message_ms_{name}": round(per_message_ms, 1),
        f"fedge_ms_per_message_{name}": round(fedge_ms, 1),
        f"serialisation_ms_per_message_{name}": round(serialisation_ms, 2),
        f"server_ms_per_message_{name}": round(server_ms, 1),
        f"engine_ms_per_message_{name}": round(
            per_message_ms - fedge_ms - serialisation_ms - server_ms, 1
        ),
    }


def minimal_figures(
    name: str, round_times_s: list[float], profile: ComputeProfile
) -> dict[str, Any]:
    """Ratio of the minimal Flower app's steady round to the same pure compute."""
    steady_s = float(np.median(round_times_s[1:]))
    compute_round_s = sum(profile.train_s) / concurrent_clients(len(profile.train_s))
    return {
        f"minimal_ratio_{name}": round(steady_s / compute_round_s, 2),
        f"minimal_round_s_{name}": round(steady_s, 3),
    }


def scale_figures(app_root: Path = REPO_ROOT) -> dict[str, Any]:
    """Return the scale-1000 scenario's steady round time and peak memory, if it exists."""
    from fedge.simulations.scenario_file import read_scenario, scenario_names

    if SCALE_SCENARIO not in scenario_names():
        return {}
    scenario = read_scenario(SCALE_SCENARIO)
    run = run_simulation(
        scenario.overrides, scenario.clients or 1000, app_root=app_root
    )
    return {
        "scale1000_seconds_per_round": round(run.steady_round_s, 2),
        "scale1000_first_round_s": round(run.first_round_s, 2),
        "scale1000_peak_memory_mib": round(run.peak_memory_mib, 1),
        "scale1000_startup_s": round(run.startup_s, 2),
        **evaluation_figures("scale1000", run),
    }


def evaluation_figures(name: str, run: SimulatedRun) -> dict[str, Any]:
    """Return the end-of-run per-client evaluation's cost, alone and per round."""
    seconds = run.extra["client_evaluation_s"]
    return {
        f"{name}_clients_evaluated": run.extra["clients_evaluated"],
        f"{name}_client_evaluation_s": round(seconds, 2),
        f"{name}_client_evaluation_to_round": round(seconds / run.steady_round_s, 2),
    }


def main(baseline: Path | None = None) -> dict[str, Any]:
    """Run every case (and the baseline's, if given) and return the figures."""
    figures: dict[str, Any] = {
        "name": "simulation_overhead",
        "rounds": ROUNDS,
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "concurrent_clients": concurrent_clients(100),
        "targets": TARGETS,
    }
    seconds, heavy = import_seconds()
    figures |= {"clientapp_import_s": round(seconds, 3), "clientapp_heavy": heavy}
    startups = []
    for name, (clients, settings) in CASES.items():
        overrides = {**settings, "num-server-rounds": ROUNDS}
        run = run_simulation(overrides, clients)
        profile = profile_clients(overrides, clients)
        figures |= case_figures(name, run, profile)
        startups.append(run.startup_s)
        if name in MINIMAL_CASES:
            times = minimal_round_times(overrides, clients)
            figures |= minimal_figures(name, times, profile)
        if baseline is not None:
            before = run_simulation(overrides, clients, app_root=baseline)
            for key, value in case_figures(name, before, profile).items():
                # The per-message split profiles this tree's ClientApp, not the
                # baseline's: keep only what describes the baseline's own run.
                if not key.startswith(("fedge_", "serialisation_", "engine_")):
                    figures[f"before_{key}"] = value
    figures["startup_s"] = round(float(np.median(startups)), 2)
    figures |= scale_figures()
    if baseline is not None:
        seconds, heavy = import_seconds(app_root=baseline)
        figures |= {"before_clientapp_import_s": round(seconds, 3)}
    figures["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    figures["targets_met"] = {
        key: bool(figures[key] <= target) for key, target in TARGETS.items()
    }
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--baseline", type=Path, help="fedge source tree to measure as 'before'"
    )
    args = parser.parse_args()
    results = main(args.baseline)
    out = REPO_ROOT / "benchmarks" / "results" / "simulation_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))

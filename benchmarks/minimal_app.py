"""A minimal Flower app with fedge's model and clients: what the engine alone costs.

The yardstick for ``simulation_overhead``'s ratios (issue 25): the same model,
the same clients' partitions and the same training call as fedge's ClientApp
(``train_plain``), but nothing else. Its ClientApp trains and replies with the
arrays and the example count; its ServerApp is Flower's own ``FedAvg.start``
loop with fedge's central evaluation as ``evaluate_fn`` (fedge evaluates every
round too), which also stamps the time: the gap between two calls is one whole
round. No checks, no privacy accounting, no metrics files, no checkpoints.

:func:`minimal_round_times` submits it with ``flwr run`` to a
:class:`~fedge.simulations.engine.SimulationEngine` of its own, the engine path a
``fedge simulate`` takes, and returns its round times.

Run alone: ``python -m benchmarks.minimal_app [CLIENTS]``.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

client = ClientApp()
server = ServerApp()

TIMES_FILE = "times-file"  # run-config key: where the ServerApp writes its round times
NUM_CLIENTS = "num-clients"  # run-config key: nodes to wait for and sample
_APP_KEYS = (TIMES_FILE, NUM_CLIENTS)
# What a worker process keeps between messages, as any real app would: the
# run's typed config, the reference preprocessing and each node's data.
_cache: dict[Any, Any] = {}


def _setup(run_config: dict[str, Any]) -> tuple[Any, Any]:
    """Return the typed fedge config and the reference data (cached per process)."""
    from fedge.server.reference_data import load_reference_data
    from fedge.shared.config import from_run_config

    key = json.dumps(run_config, sort_keys=True, default=str)
    if key not in _cache:
        fedge_keys = {k: v for k, v in run_config.items() if k not in _APP_KEYS}
        config = from_run_config(fedge_keys, fill_defaults=True)
        _cache[key] = config, load_reference_data(config.data)
    return _cache[key]  # type: ignore[no-any-return]


def _model(run_config: dict[str, Any]) -> torch.nn.Module:
    from fedge.server.starting_model import model_spec_for
    from fedge.shared.models import build_model

    config, reference = _setup(run_config)
    spec = model_spec_for(config, reference.preprocessing)
    return build_model(spec, model_seed=config.train.model_seed)


@client.train()
def train(msg: Message, context: Context) -> Message:
    """Train fedge's model on this node's partition; reply arrays and examples."""
    from fedge.client.node_data import load_node_data
    from fedge.client.training import train_plain
    from fedge.shared.privacy_plan import local_schedule
    from fedge.shared.records import record_scalar

    torch.set_num_threads(1)
    run_config = dict(context.run_config)
    config, reference = _setup(run_config)
    node = ("node", context.node_config["partition-id"], context.run_id)
    if node not in _cache:
        _cache[node] = load_node_data(
            context.node_config, config.data, reference.preprocessing
        )
    data = _cache[node].train
    model = _model(run_config)
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    server_round = int(
        record_scalar(msg.content.config_records["config"], "server-round")
    )
    schedule = local_schedule(config, num_examples=len(data))
    result = train_plain(
        model,
        data.x,
        data.y,
        epochs=schedule.local_epochs,
        batch_size=schedule.batch_size,
        learning_rate=config.train.learning_rate,
        momentum=config.train.momentum,
        seed=config.train.model_seed * 100_003 + server_round,
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"num-examples": result.num_examples}),
        }
    )
    return Message(content=content, reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    """Flower's FedAvg loop with central evaluation; write the round stamps."""
    from fedge.shared.evaluation import evaluate_model
    from fedge.shared.records import load_record_into

    run_config = dict(context.run_config)
    config, reference = _setup(run_config)
    model = _model(run_config)
    stamps: list[float] = []

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        load_record_into(model, arrays)
        figures = evaluate_model(model, reference.x, reference.y)
        stamps.append(time.monotonic())
        return MetricRecord({k: float(v) for k, v in figures.items()})

    clients = int(run_config[NUM_CLIENTS])
    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=clients,
        min_available_nodes=clients,
    )
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=config.run.num_server_rounds,
        evaluate_fn=central,
    )
    rounds = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    Path(str(run_config[TIMES_FILE])).write_text(json.dumps(rounds))


def app_pyproject(module: str, config: Mapping[str, Any]) -> str:
    """Return the ``pyproject.toml`` of a one-module Flower app for a benchmark.

    ``module`` defines ``server`` (a ServerApp) and ``client`` (a ClientApp);
    ``config`` is the app's run config with its defaults.
    """
    import tomli_w

    return tomli_w.dumps(
        {
            "build-system": {
                "requires": ["setuptools>=68"],
                "build-backend": "setuptools.build_meta",
            },
            "project": {
                "name": module.replace("_", "-"),
                "version": "1.0.0",
                "dependencies": [],
            },
            "tool": {
                "flwr": {
                    "app": {
                        "publisher": "fedge-bench",
                        "components": {
                            "serverapp": f"{module}:server",
                            "clientapp": f"{module}:client",
                        },
                        "config": dict(config),
                    }
                }
            },
        }
    )


def minimal_round_times(
    overrides: dict[str, Any], clients: int, *, cpus_per_client: int = 1
) -> list[float]:
    """Run the minimal app on a fresh engine; return each round's wall time (s).

    ``overrides`` are fedge run-config keys (``num-server-rounds``,
    ``local-epochs``, ...); the app trains with what they resolve to.

    Raises
    ------
    RuntimeError
        The run wrote no round times (its log's tail says why).
    """
    from fedge.shared.run_folder import FLOWER_LOG_FILE
    from fedge.simulations.engine import SimulationEngine
    from fedge.simulations.flower_processes import flwr_run_command, write_run_config

    with tempfile.TemporaryDirectory(prefix="fedge-minimal-") as tmp:
        app = Path(tmp) / "app"
        app.mkdir()
        times_file = Path(tmp) / "times.json"
        config = {**overrides, NUM_CLIENTS: clients, TIMES_FILE: ""}
        (app / "pyproject.toml").write_text(app_pyproject("minimal_app", config))
        (app / "minimal_app.py").write_text(Path(__file__).read_text())
        settings = write_run_config(
            Path(tmp) / "run-config.toml",
            {**overrides, NUM_CLIENTS: clients, TIMES_FILE: str(times_file)},
        )
        command = flwr_run_command(
            app,
            settings,
            federation_config={
                "num-supernodes": clients,
                "client-resources-num-cpus": cpus_per_client,
            },
        )
        log = Path(tmp) / FLOWER_LOG_FILE
        with (
            SimulationEngine() as engine,
            engine.run_slot() as link,
            log.open("w") as out,
            subprocess.Popen(
                command, env=link.env, cwd=app, stdout=out, stderr=subprocess.STDOUT
            ) as process,
        ):
            # Ended once the times are written, as fedge simulate ends a run
            # of its own engine once its folder is complete.
            while process.poll() is None and not times_file.is_file():
                time.sleep(0.1)
            process.terminate()
        if not times_file.is_file():
            tail = log.read_text()[-3000:]
            raise RuntimeError(f"the minimal app wrote no round times:\n{tail}")
        return [float(t) for t in json.loads(times_file.read_text())]


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    print(
        minimal_round_times({"num-server-rounds": 4, "local-epochs": 5}, count),
        flush=True,
    )

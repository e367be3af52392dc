"""A federation on this machine: one SuperLink, two SuperNodes, one run over gRPC.

What an operator does with Flower's own commands, on 127.0.0.1 and without
TLS (the deployment guide adds certificates and node keys):

1. ``flower-superlink --insecure`` (the coordinator);
2. ``flower-supernode --insecure --superlink 127.0.0.1:PORT --node-config
   "partition-id=I num-partitions=2 state-dir=DIR"``, once per node (each
   holds one half of the built-in digits);
3. ``flwr run . <connection> --stream --run-config FILE`` to submit fedge's
   ServerApp and ClientApp. Here ``.`` is a copy of the app (its packages and
   ``pyproject.toml``, as ``fedge simulate`` submits): ``flwr run`` walks every
   file under the folder it submits before it filters them, and a checkout
   holds its ``.venv`` and ``.git`` (seconds a submission).

fedge's launch helpers (:mod:`fedge.simulations.flower_processes`) start each
on free ports with a private ``FLWR_HOME`` and stop them at the end, even on
error. The run folder is then read with :class:`fedge.Run`, as a simulated one.

Run: ``python examples/local_deployment.py --out DIR`` (default: the
``FEDGE_EXAMPLES_OUT`` environment variable, else ``examples/out``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import time
from pathlib import Path

import fedge
from fedge.shared.flower_config_text import format_node_config
from fedge.simulations.fault_app import write_app_copy
from fedge.simulations.flower_processes import (
    flwr_run_command,
    free_port,
    running_superlink,
    start_logged,
    stop_process,
    write_run_config,
)
from fedge.simulations.simulate import APP_DIR

NODES = 2


def main(argv: list[str] | None = None) -> None:
    """Start the federation, run it, print the run's metrics."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("FEDGE_EXAMPLES_OUT", "examples/out")),
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    work = (args.out / time.strftime("deployment-%Y%m%d-%H%M%S")).absolute()
    work.mkdir(parents=True)
    overrides = {
        "num-server-rounds": args.rounds,
        "min-nodes": NODES,
        "local-epochs": 1,
        "output-dir": str(work / "runs"),
        "run-name": "local",
    }

    with (
        running_superlink(work, simulation=False) as link,
        contextlib.ExitStack() as nodes,
    ):
        for i in range(NODES):
            node_config = {
                "partition-id": i,
                "num-partitions": NODES,
                "state-dir": str(work / f"node-{i}"),
            }
            command = [
                "flower-supernode", "--insecure", "--superlink", link.address,
                "--port", str(free_port()),
                "--node-config", format_node_config(node_config),
            ]  # fmt: skip
            node = start_logged(command, env=link.env, log_path=work / f"node-{i}.log")
            nodes.callback(stop_process, node)
        app = write_app_copy(APP_DIR, work / "app")
        submit = flwr_run_command(app, write_run_config(work / "run.toml", overrides))
        subprocess.run(submit, env=link.env, cwd=app, check=True)

    run = fedge.Run(work / "runs" / "local")
    print(run.metrics[["round", "central-accuracy", "replies"]].to_string(index=False))
    print(f"{run.status}: run folder {run.path}; logs in {work}")


if __name__ == "__main__":
    main()

"""The fedge ServerApp: Flower glue that reads the config and runs the federation."""

from __future__ import annotations

import logging

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedge.server.federation import run_federation
from fedge.server.run_ending import end_failed_run, quiet_flower_on_run_end
from fedge.shared.config import RunConfig, from_run_config
from fedge.shared.errors import FedgeError

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run a federation as the run config describes and leave a complete run folder.

    A run that cannot continue ends with one logged line and ``status.json``
    (:mod:`fedge.server.run_ending`), and Flower records it as failed.
    """
    _configure_logging()
    quiet_flower_on_run_end()
    # Central evaluation is small; one thread leaves the cores to co-located clients.
    torch.set_num_threads(1)
    config: RunConfig | None = None
    try:
        config = from_run_config(context.run_config)
        run_federation(grid, config)
    except FedgeError as e:
        raise end_failed_run(config, e) from None


def _configure_logging() -> None:
    """Show fedge's progress lines where Flower shows its own logs."""
    for name in ("fedge", "server", "shared", "edge_export"):
        package_logger = logging.getLogger(name)
        if not package_logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s fedge: %(message)s"))
            package_logger.addHandler(handler)
            package_logger.setLevel(logging.INFO)
            package_logger.propagate = False

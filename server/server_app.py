"""The fedge ServerApp: Flower glue that reads the config and runs the federation."""

from __future__ import annotations

import logging

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.federation import run_federation
from shared.config import from_run_config

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run a federation as the run config describes and leave a complete run folder."""
    _configure_logging()
    # Central evaluation is small; one thread leaves the cores to co-located clients.
    torch.set_num_threads(1)
    run_federation(grid, from_run_config(context.run_config))


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

"""Start a node's own ``flower-supernode``: TLS, node key, data and ledger folder.

The settings come from flags, else ``FEDGE_*`` environment variables (how
``deploy/supernode.sh`` and the systemd unit configure a node), else defaults;
:func:`supernode_command` turns them into Flower's command line and
:func:`supernode_environment` into its environment. ``fedge node start``
replaces itself with that process.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedge.shared import keys
from fedge.shared.errors import FedgeError
from fedge.shared.flower_config_text import format_node_config

# flag -> (environment variable, default, help); the launcher script and the
# systemd unit set the variables, a person types the flags.
START_SETTINGS: dict[str, tuple[str, str, str]] = {
    "superlink": (
        "FEDGE_SUPERLINK",
        "",
        "the coordinator as HOST:PORT; HOST must be named in its certificate",
    ),
    "node-key": (
        "FEDGE_NODE_KEY",
        "",
        "this node's private key (deploy/make-node-key.sh); the coordinator "
        "registered its .pub",
    ),
    "ca-cert": ("FEDGE_CA_CERT", "./certs/ca.crt", "the federation's CA certificate"),
    "data-path": (
        "FEDGE_DATA_PATH",
        "",
        "this node's CSV / Parquet / .npz file (node config 'data-path')",
    ),
    "state-dir": (
        "FEDGE_STATE_DIR",
        "./fedge-state",
        "where the node keeps its privacy ledgers (node config 'state-dir'), so a "
        "restarted node continues its ε; keep it on persistent storage",
    ),
    "node-config": (
        "FEDGE_NODE_CONFIG",
        "",
        "further node config, e.g. 'partition-id=0 num-partitions=2' for a "
        "built-in data set instead of --data-path",
    ),
    "port": (
        "FEDGE_NODE_PORT",
        "9094",
        "local port of the node's ClientApp runtime; differs per node on one host",
    ),
}
SUPERNODE = "flower-supernode"
# Flower's SuperExec looks for a new message every FLWR_SUPEREXEC_TASK_POLL_INTERVAL
# seconds (flwr 1.42: default 1 s, allowed 0.01-60 s), the one wait on a node's
# message path Flower lets a user set. 0.2 s takes nearly all the wait a poll
# can save (0.4 s a message on average against 1 s); 0.05 s would save 0.075 s
# more at three times the idle node's CPU, and benchmarks/deployment_round
# measured it no faster (README, "What a round costs"). An operator's own value
# of the variable is kept.
TASK_POLL_INTERVAL_VARIABLE = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
TASK_POLL_INTERVAL_S = 0.2


@dataclass(frozen=True)
class NodeLaunch:
    """What a node needs to join a secure federation.

    Attributes
    ----------
    superlink : str
        The coordinator as ``HOST:PORT``.
    node_key : Path
        The node's private key for SuperNode authentication.
    ca_cert : Path
        The federation's CA certificate, to verify the coordinator.
    state_dir : Path
        Where the node keeps its privacy ledgers.
    data_path : Path or None
        The node's data file; None when ``node_config`` names a partition.
    node_config : str
        Further node config in Flower's ``key=value ...`` form.
    port : int
        Local port of the node's ClientApp runtime.
    """

    superlink: str
    node_key: Path
    ca_cert: Path
    state_dir: Path
    data_path: Path | None = None
    node_config: str = ""
    port: int = 9094


def node_launch(
    values: Mapping[str, str | None], environ: Mapping[str, str] = os.environ
) -> NodeLaunch:
    """Return the settings from flags (``values``, by flag name), else environment, else defaults.

    Raises
    ------
    FedgeError
        Listing every missing or unreadable setting, with the flag and
        variable that set it.
    """
    resolved = {
        flag: values.get(flag) or environ.get(variable) or default
        for flag, (variable, default, _) in START_SETTINGS.items()
    }
    problems = []

    def name(flag: str) -> str:
        return f"--{flag} ({START_SETTINGS[flag][0]})"

    if not resolved["superlink"]:
        problems.append(f"set {name('superlink')} to the coordinator's HOST:PORT")
    if not resolved["node-key"]:
        problems.append(
            f"set {name('node-key')} to this node's private key (make-node-key.sh)"
        )
    for flag, what, fix in (
        ("node-key", "node key", ""),
        ("ca-cert", "CA certificate", "; copy the coordinator's ca.crt"),
        ("data-path", "data file", ""),
    ):
        path = resolved[flag]
        if path and not os.access(path, os.R_OK):
            problems.append(f"cannot read {what} {path} given by {name(flag)}{fix}")
    try:
        port = int(resolved["port"])
    except ValueError:
        problems.append(
            f"{name('port')} must be a port number, got {resolved['port']!r}"
        )
        port = 0
    if problems:
        raise FedgeError("; ".join(problems))
    return NodeLaunch(
        superlink=resolved["superlink"],
        node_key=Path(resolved["node-key"]).resolve(),
        ca_cert=Path(resolved["ca-cert"]).resolve(),
        # Absolute: the node config must not depend on a working directory.
        state_dir=Path(resolved["state-dir"]).resolve(),
        data_path=Path(resolved["data-path"]).resolve()
        if resolved["data-path"]
        else None,
        node_config=resolved["node-config"],
        port=port,
    )


def supernode_command(
    launch: NodeLaunch, flower_args: Sequence[str] = (), *, program: str = SUPERNODE
) -> list[str]:
    """Return the ``flower-supernode`` command line that ``launch`` describes."""
    node_config = {keys.STATE_DIR: str(launch.state_dir)}
    if launch.data_path is not None:
        node_config = {keys.DATA_PATH: str(launch.data_path), **node_config}
    text = " ".join(filter(None, [format_node_config(node_config), launch.node_config]))
    return [
        program,
        "--root-certificates",
        str(launch.ca_cert),
        "--superlink",
        launch.superlink,
        "--auth-supernode-private-key",
        str(launch.node_key),
        "--port",
        str(launch.port),
        "--node-config",
        text,
        *flower_args,
    ]


def supernode_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Return the environment ``flower-supernode`` runs with: ``environ`` plus defaults.

    Telemetry off and the SuperExec's task poll interval at
    :data:`TASK_POLL_INTERVAL_S` seconds, each only where ``environ`` does not
    set it already: an operator's own value wins. The SuperNode hands its
    environment on to the SuperExec it starts, which reads the interval.
    """
    defaults = {
        "FLWR_TELEMETRY_ENABLED": "0",
        TASK_POLL_INTERVAL_VARIABLE: f"{TASK_POLL_INTERVAL_S:g}",
    }
    return {**defaults, **environ}


def supernode_program() -> str:
    """Return the ``flower-supernode`` to run: the virtualenv's own, else PATH's.

    Raises
    ------
    FedgeError
        Neither exists.
    """
    # The virtualenv's own flower-supernode first: a service's PATH may lack it.
    sibling = Path(sys.executable).parent / SUPERNODE
    program = str(sibling) if sibling.is_file() else shutil.which(SUPERNODE)
    if program is None:
        raise FedgeError(
            f"{SUPERNODE} not found next to {sys.executable} or on PATH; "
            "activate the fedge virtualenv (make setup)"
        )
    return program

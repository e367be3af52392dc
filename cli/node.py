"""``fedge node``: a data owner's commands, run on the node's own machine.

``fedge node check FILE`` reads the node's data file as the ClientApp would and
reports what it found, or the first problem with file, column and row. With
``--reference`` (the coordinator's held-out file, or a run's ``model.json``) the
file is encoded with the federation's preprocessing, which also catches missing
columns and unknown labels. With ``--model MODULE:CALLABLE`` (or a
``model.json`` naming the user's own model) it checks that the model code the
coordinator names imports on this node, builds on the data's shape, and is the
same code (SHA-256 of its source file, package version) as the coordinator's.

``fedge node start`` replaces itself with Flower's own ``flower-supernode``,
connected over TLS to the coordinator and authenticated by the node's key, with
the node's data file and privacy-ledger folder in its node config, and its
SuperExec's task poll interval at :data:`TASK_POLL_INTERVAL_S` unless the
environment sets it. Every flag also reads a ``FEDGE_*`` environment variable,
which is how ``deploy/supernode.sh`` and the systemd unit configure it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedge.shared.config import IMPUTE_MODES, default_run_config
from fedge.shared.errors import DataError, FedgeError, ModelError

if TYPE_CHECKING:  # the data stack (pandas) loads only when the command runs
    from fedge.shared.datasets import Dataset
    from fedge.shared.model_reference import ModelIdentity


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fedge node`` and its subcommands."""
    node = subparsers.add_parser(
        "node",
        help="a data owner's node: check its data, start it",
        description="A data owner's commands: check the node's data, then start it.",
    )
    actions = node.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    _add_check(actions)
    _add_start(actions)


def _add_check(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    defaults = default_run_config()
    p = actions.add_parser(
        "check",
        help="check the node's CSV/Parquet/.npz file before it joins",
        description=(
            "Read a node's data file as the ClientApp would and report rows, features "
            "and labels, or the first problem (file, column, row)."
        ),
    )
    p.add_argument("path", type=Path, help="the node's CSV, Parquet or .npz file")
    p.add_argument(
        "--label-column",
        default=defaults["label-column"],
        help=f"label column (default: {defaults['label-column']})",
    )
    p.add_argument(
        "--reference",
        type=Path,
        help="the coordinator's held-out file, or a run's model.json: encode with "
        "the federation's preprocessing",
    )
    p.add_argument(
        "--impute",
        choices=IMPUTE_MODES,
        default=defaults["impute"],
        help="missing values: none refuses them, mean imputes them "
        f"(default: {defaults['impute']})",
    )
    p.add_argument(
        "--model",
        metavar="MODULE:CALLABLE",
        help="the model the coordinator names (run config 'model'): check it "
        "imports here and builds on this data's shape (default: the one a "
        "--reference model.json names, if any)",
    )
    p.add_argument(
        "--model-sha256",
        metavar="HEX",
        help="the SHA-256 of the coordinator's model source file (sha256sum "
        "nets.py): refuse if this node's copy differs",
    )
    p.set_defaults(run=run_check, command_name="node check")


def check_node_file(
    path: Path, *, label_column: str, impute: str, reference: Path | None
) -> Dataset:
    """Load ``path`` as a node would, with the federation's preprocessing if known.

    Returns
    -------
    Dataset
        The encoded data.

    Raises
    ------
    DataError
        Naming the file, column and row of the first problem, or a reference
        ``model.json`` that is not one.
    """
    from fedge.shared.datasets import fit_file, load_file
    from fedge.shared.preprocessing import Preprocessing

    if reference is None:
        return fit_file(path, label_column=label_column, impute=impute)
    if reference.suffix == ".json":
        try:
            meta = json.loads(reference.read_text())
            preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{reference} is not a fedge model.json: {e}") from e
        return load_file(path, preprocessing)
    fitted = fit_file(reference, label_column=label_column, impute=impute)
    return load_file(path, fitted.preprocessing)


def check_node_model(
    reference: Path | None,
    *,
    model: str | None,
    model_sha256: str | None,
    input_shape: tuple[int, ...],
    num_classes: int,
) -> ModelIdentity | None:
    """Build the user's model the coordinator names, as this node's ClientApp would.

    The model is ``model``, else the one a ``reference`` ``model.json`` names;
    the expected identity is that ``model.json``'s (reference, SHA-256, package
    version), and ``model_sha256`` when given.

    Returns
    -------
    ModelIdentity or None
        This node's copy's identity; None when no user's model is named.

    Raises
    ------
    ModelError
        The code cannot be imported or built (see
        :func:`fedge.shared.model_reference.build_user_model`), or differs from the
        coordinator's (one line naming both).
    """
    from fedge.shared.model_reference import (
        build_user_model,
        is_model_reference,
    )
    from fedge.shared.run_folder import ModelCard

    expected: ModelIdentity | None = None
    if reference is not None and reference.suffix == ".json":
        spec = ModelCard.from_dict(
            json.loads(reference.read_text()), source=str(reference)
        ).spec
        expected = spec.identity
        if model is None and expected is not None:
            model = spec.name
    if model is None or not is_model_reference(model):
        if model_sha256:
            raise FedgeError(
                "--model-sha256 needs the user's model: give --model MODULE:CALLABLE"
            )
        return None
    if expected is not None and expected.reference != model:
        expected = None  # another model than the card's: only --model-sha256 applies
    _, local = build_user_model(
        model, input_shape=input_shape, num_classes=num_classes, expected=expected
    )
    if model_sha256 and model_sha256.strip().lower() != local.sha256:
        raise ModelError(
            f"model {model!r}: this node's copy has sha256 {local.sha256}, the "
            f"coordinator's has {model_sha256.strip().lower()}; nothing would be "
            "trained: install the coordinator's version of the model code here"
        )
    return local


def run_check(args: argparse.Namespace) -> int:
    """Print a summary of the file; DataError (exit 2) names what is wrong."""
    import numpy as np

    dataset = check_node_file(
        args.path,
        label_column=args.label_column,
        impute=args.impute,
        reference=args.reference,
    )
    identity = check_node_model(
        args.reference,
        model=args.model,
        model_sha256=args.model_sha256,
        input_shape=tuple(dataset.preprocessing.input_shape),
        num_classes=dataset.preprocessing.num_classes,
    )
    prep = dataset.preprocessing
    counts = np.bincount(dataset.y, minlength=prep.num_classes)
    print(f"{args.path}: {len(dataset)} examples, encoded shape {prep.input_shape}")
    if prep.kind == "tabular":
        print(
            f"  {len(prep.numeric_columns)} numeric, {len(prep.categories)} categorical columns"
        )
    print(
        "  labels: "
        + ", ".join(f"{c}={n}" for c, n in zip(prep.class_names, counts, strict=True))
    )
    missing = [c for c, n in zip(prep.class_names, counts, strict=True) if n == 0]
    if missing:
        print(f"  note: no examples of {missing} (fine for a non-IID node)")
    if identity is not None:
        compared = (
            "same as the coordinator's"
            if args.model_sha256
            or (args.reference and args.reference.suffix == ".json")
            else "compare the sha256 with the coordinator's file (sha256sum)"
        )
        print(
            f"  model {identity.describe()}: imports and gives "
            f"{prep.num_classes} logits here; {compared}"
        )
    print("ok: this node's data can join")
    return 0


# ------------------------------------------------------------------ start
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


def _add_start(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = actions.add_parser(
        "start",
        help="start this node's flower-supernode (TLS, node key, data, ledgers)",
        description=(
            "Start Flower's flower-supernode for this node: TLS to the coordinator "
            "verified with the federation's CA, authenticated by the node's key, "
            "with the node's data file and ledger folder (absolute paths) in its "
            "node config. Options after -- go to flower-supernode unchanged. "
            "Each option also reads the environment variable named in brackets. "
            f"The node's SuperExec looks for new messages every "
            f"{TASK_POLL_INTERVAL_S:g} s ({TASK_POLL_INTERVAL_VARIABLE}; Flower's "
            "own default is 1 s) unless that variable is already set."
        ),
    )
    for flag, (variable, default, text) in START_SETTINGS.items():
        shown = f"default: {default}" if default else "unset"
        p.add_argument(
            f"--{flag}",
            default=None,
            metavar=flag.split("-")[-1].upper(),
            help=f"{text} [{variable}; {shown}]",
        )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the flower-supernode command line and exit",
    )
    p.add_argument(
        "flower_args",
        nargs=argparse.REMAINDER,
        metavar="-- FLOWER_OPTIONS",
        help="passed on to flower-supernode",
    )
    p.set_defaults(run=run_start, command_name="node start")


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
    from fedge.shared import keys
    from fedge.shared.flower_config_text import format_node_config

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


def run_start(args: argparse.Namespace) -> int:
    """Print the command (``--dry-run``) or become ``flower-supernode``."""
    launch = node_launch(
        {flag: getattr(args, flag.replace("-", "_")) for flag in START_SETTINGS}
    )
    flower_args = list(args.flower_args)
    if flower_args[:1] == ["--"]:
        flower_args = flower_args[1:]
    # The virtualenv's own flower-supernode first: a service's PATH may lack it.
    sibling = Path(sys.executable).parent / SUPERNODE
    program = str(sibling) if sibling.is_file() else shutil.which(SUPERNODE)
    if args.dry_run:
        print(shlex.join(supernode_command(launch, flower_args)))
        return 0
    if program is None:
        raise FedgeError(
            f"{SUPERNODE} not found next to {sys.executable} or on PATH; "
            "activate the fedge virtualenv (make setup)"
        )
    launch.state_dir.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    # exec: the SuperNode receives a service manager's signals directly.
    os.execve(
        program,
        supernode_command(launch, flower_args, program=program),
        supernode_environment(),
    )
    return 0  # not reached

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
import os
import shlex
import sys
from pathlib import Path

from fedge.client.supernode_launch import (
    START_SETTINGS,
    TASK_POLL_INTERVAL_S,
    TASK_POLL_INTERVAL_VARIABLE,
    node_launch,
    supernode_command,
    supernode_environment,
    supernode_program,
)
from fedge.shared.config import IMPUTE_MODES, default_run_config


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


def run_check(args: argparse.Namespace) -> int:
    """Print a summary of the file; DataError (exit 2) names what is wrong."""
    import numpy as np

    from fedge.client.node_check import check_node_file, check_node_model

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


def run_start(args: argparse.Namespace) -> int:
    """Print the command (``--dry-run``) or become ``flower-supernode``."""
    launch = node_launch(
        {flag: getattr(args, flag.replace("-", "_")) for flag in START_SETTINGS}
    )
    flower_args = list(args.flower_args)
    if flower_args[:1] == ["--"]:
        flower_args = flower_args[1:]
    if args.dry_run:
        print(shlex.join(supernode_command(launch, flower_args)))
        return 0
    program = supernode_program()
    launch.state_dir.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    # exec: the SuperNode receives a service manager's signals directly.
    os.execve(
        program,
        supernode_command(launch, flower_args, program=program),
        supernode_environment(),
    )
    return 0  # not reached

"""``fedge simulate``: many virtual clients on one machine, on Flower's simulation engine.

The flags map onto run-config and simulation keys, over a scenario file's
(:func:`resolve_arguments`), by the same
:func:`fedge.simulations.simulate_options.run_simulation` that
:func:`fedge.simulate` calls. Choices and defaults shown in ``--help``
come from the run config's own module and ``pyproject.toml``.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

from fedge.shared.config import (
    DATASET_FILE,
    DP_MODES,
    PARTITIONINGS,
    STRATEGIES,
    default_run_config,
)
from fedge.shared.datasets import BUILTIN_DATASETS
from fedge.shared.errors import FedgeError
from fedge.shared.run_folder import read_status
from fedge.simulations.own_data import HOLDOUT_FRACTION
from fedge.simulations.scenario_file import (
    DEFAULT_CLIENTS,
    format_scenario_list,
    list_scenarios,
)
from fedge.simulations.simulate_options import (
    Arguments,
    SimulateOptions,
    resolve_options,
    run_simulation,
)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fedge simulate``."""
    defaults = default_run_config()
    p = subparsers.add_parser(
        "simulate",
        help="run a federation of virtual clients on this machine",
        description=(
            "Run the fedge ServerApp and ClientApp on Flower's simulation engine with "
            "N virtual clients. Any run-config key (see pyproject.toml "
            "[tool.flwr.app.config]) can be set with --set KEY=VALUE or a --scenario file. "
            "Simulated faults, also by --set or scenario: fault-attack "
            "(none|sign-flip|scale|nan|wrong-shape), fault-attackers (count), "
            "fault-scale (k of sign-flip/scale), fault-dropout (probability per "
            "node and round), fault-seed, fault-wipe-state (PARTITION@ROUND[,...]: "
            "that node's privacy state is wiped before that round's training, as "
            "a lost disk). Flags override the scenario file."
        ),
        # --data must never silently match --dataset.
        allow_abbrev=False,
    )
    p.add_argument(
        "--list",
        action="store_true",
        help="list the packaged scenarios with their client counts, then exit",
    )
    p.add_argument(
        "--clients",
        type=int,
        help="number of virtual clients "
        f"(default: the scenario's, else {DEFAULT_CLIENTS})",
    )
    p.add_argument(
        "--rounds",
        type=int,
        help=f"server rounds (default: num-server-rounds = {defaults['num-server-rounds']})",
    )
    p.add_argument(
        "--dataset",
        help=f"{' | '.join((*BUILTIN_DATASETS, DATASET_FILE))} "
        f"(default: {defaults['dataset']})",
    )
    p.add_argument(
        "--partitioning",
        choices=PARTITIONINGS,
        help=f"how the data is split over clients (default: {defaults['partitioning']})",
    )
    p.add_argument(
        "--alpha",
        type=float,
        help=f"Dirichlet concentration α (default: {defaults['dirichlet-alpha']})",
    )
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        metavar="STRATEGY",
        help=f"aggregation strategy: {', '.join(STRATEGIES)} "
        f"(default: {defaults['strategy']})",
    )
    p.add_argument(
        "--dp-mode",
        choices=DP_MODES,
        help=f"sample: DP-SGD on each client, central: user-level DP on the "
        f"server (default: {defaults['dp-mode']})",
    )
    p.add_argument(
        "--model",
        metavar="MODEL",
        help="auto | mlp | cnn | cnn1d | gru | random-conv-linear (fixed "
        "random-convolution features, only a linear head trains), or your own: "
        "MODULE:CALLABLE, where "
        "MODULE is an importable module or a .py file (shipped to every "
        "worker) and CALLABLE(input_shape=..., num_classes=...) returns an "
        f"nn.Module giving logits (default: {defaults['model']})",
    )
    p.add_argument(
        "--target-epsilon",
        type=float,
        help="each client's ε budget for the run "
        f"(default: {defaults['target-epsilon']})",
    )
    data = p.add_argument_group(
        "your own data",
        "CSV, Parquet or .npz files, read as a deployment's nodes read theirs "
        "(`fedge node check` explains any problem)",
    )
    data.add_argument(
        "--data",
        metavar="FILE",
        help="one file split among the clients (by --partitioning, or "
        "--partition-by); without --eval-data a seeded, stratified "
        f"{HOLDOUT_FRACTION * 100:.0f} %% of it is the central test set no client sees",
    )
    data.add_argument(
        "--node-data",
        metavar="DIR_OR_GLOB",
        help="one file per client, as each SuperNode's data-path (needs --eval-data)",
    )
    data.add_argument(
        "--eval-data",
        metavar="FILE",
        help="the coordinator's held-out file: central test set; the "
        "preprocessing is fitted on it alone",
    )
    data.add_argument(
        "--label-column",
        help=f"label column of the files (default: {defaults['label-column']})",
    )
    data.add_argument(
        "--partition-by",
        metavar="COLUMN",
        help="with --data: one client per distinct value of COLUMN (e.g. a site "
        "id), the column dropped from the features; sets the client count",
    )
    p.add_argument(
        "--scenario",
        help=(
            "TOML file of run-config, fault-* and simulation keys (clients, "
            "cpus-per-client, data, ...), or the name of a packaged scenario "
            "(see --list)"
        ),
    )
    p.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any run-config key (TOML value), repeatable",
    )
    p.add_argument(
        "--output-dir",
        type=Path,
        default=Path(defaults["output-dir"]),
        help=f"parent of run folders (default: {defaults['output-dir']})",
    )
    p.add_argument(
        "--run-name", default="", help="run folder name (default: a timestamp)"
    )
    p.add_argument(
        "--cpus-per-client",
        type=int,
        help="CPU cores reserved per virtual client; bounds parallel clients "
        "(default: the scenario's, else 1)",
    )
    p.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="run the virtual clients on this existing Ray cluster (its head's "
        "address, as `ray start --head` prints it); default: the engine starts "
        "a Ray cluster of its own on this machine for the run",
    )
    p.add_argument(
        "--verbose", action="store_true", help="show all of Flower's log lines"
    )
    p.set_defaults(run=run)


def options_from(args: argparse.Namespace) -> SimulateOptions:
    """Return the options a ``fedge simulate`` command line gives.

    Raises
    ------
    FedgeError
        A ``--set`` without ``=``.
    """
    settings = []
    for setting in args.settings:
        key, sep, value = setting.partition("=")
        if not sep:
            raise FedgeError(f"--set expects KEY=VALUE, got {setting!r}")
        settings.append((key.strip(), _parse_toml_value(value.strip())))
    return SimulateOptions(
        clients=args.clients,
        rounds=args.rounds,
        dataset=args.dataset,
        partitioning=args.partitioning,
        alpha=args.alpha,
        strategy=args.strategy,
        dp_mode=args.dp_mode,
        target_epsilon=args.target_epsilon,
        model=args.model,
        data=args.data,
        node_data=args.node_data,
        eval_data=args.eval_data,
        label_column=args.label_column,
        partition_by=args.partition_by,
        cpus_per_client=args.cpus_per_client,
        ray_address=args.ray_address,
        scenario=args.scenario,
        settings=settings,
    )


def resolve_arguments(args: argparse.Namespace) -> Arguments:
    """Scenario file, then named flags, then ``--set``: later ones win."""
    return resolve_options(options_from(args))


def _parse_toml_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word is a string, as a user would expect


def run(args: argparse.Namespace) -> int:
    """CLI entry: run, then print the final accuracy and where the results are."""
    if args.list:
        print(format_scenario_list(list_scenarios()))
        return 0
    run_dir = run_simulation(
        options_from(args),
        output_dir=args.output_dir,
        run_name=args.run_name,
        verbose=args.verbose,
    )
    status = read_status(run_dir)
    print(f"final central accuracy: {status.get('final_accuracy', float('nan')):.4f}")
    print(f"run folder: {run_dir}")
    return 0

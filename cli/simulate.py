"""``fedge simulate``: many virtual clients on one machine, on Flower's simulation engine.

The flags map onto run-config and simulation keys, over a scenario file's
(:func:`resolve_arguments`); the run itself is
:func:`fedge.simulations.simulate.simulate`. Choices and defaults shown in ``--help``
come from the run config's own module and ``pyproject.toml``.
"""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import dataclass
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
from fedge.simulations import simulate as simulation
from fedge.simulations.own_data import HOLDOUT_FRACTION, OwnData
from fedge.simulations.scenario_file import (
    DEFAULT_CLIENTS,
    SIMULATION_KEYS,
    format_scenario_list,
    list_scenarios,
    read_scenario,
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


@dataclass(frozen=True)
class Arguments:
    """What a ``fedge simulate`` command line asks for, scenario file merged in.

    Attributes
    ----------
    overrides : dict
        Run-config and ``fault-*`` keys.
    simulation : dict
        :data:`~fedge.simulations.scenario_file.SIMULATION_KEYS` that were set.
    notes : list of str
        One note per setting a flag changed from the scenario file's value,
        e.g. ``"clients 5 from --clients (scenario: 3)"``.
    """

    overrides: dict[str, Any]
    simulation: dict[str, Any]
    notes: list[str]


def resolve_arguments(args: argparse.Namespace) -> Arguments:
    """Scenario file, then named flags, then ``--set``: later ones win."""
    scenario = read_scenario(args.scenario) if args.scenario else None
    overrides = dict(scenario.overrides) if scenario else {}
    simulation = dict(scenario.simulation) if scenario else {}
    named = {
        "num-server-rounds": ("--rounds", args.rounds),
        "dataset": ("--dataset", args.dataset),
        "partitioning": ("--partitioning", args.partitioning),
        "dirichlet-alpha": ("--alpha", args.alpha),
        "strategy": ("--strategy", args.strategy),
        "dp-mode": ("--dp-mode", args.dp_mode),
        "target-epsilon": ("--target-epsilon", args.target_epsilon),
        "model": ("--model", _absolute_model(args.model)),
        "clients": ("--clients", args.clients),
        "cpus-per-client": ("--cpus-per-client", args.cpus_per_client),
        "data": ("--data", _absolute(args.data)),
        "node-data": ("--node-data", _absolute(args.node_data)),
        "partition-by": ("--partition-by", args.partition_by),
        "eval-data-path": ("--eval-data", _absolute(args.eval_data)),
        "label-column": ("--label-column", args.label_column),
        "ray-address": ("--ray-address", args.ray_address),
    }
    # key -> (flag, value), in the order they apply
    flags = {k: fv for k, fv in named.items() if fv[1] is not None}
    for setting in args.settings:
        key, sep, value = setting.partition("=")
        if not sep:
            raise FedgeError(f"--set expects KEY=VALUE, got {setting!r}")
        # `--set clients=3` works as `--clients 3` does.
        flags[key.strip()] = ("--set", _parse_toml_value(value.strip()))
    notes = []
    for key, (flag, value) in flags.items():
        target = simulation if key in SIMULATION_KEYS else overrides
        if key in target and target[key] != value:
            notes.append(f"{key} {value!r} from {flag} (scenario: {target[key]!r})")
        target[key] = value
    return Arguments(overrides=overrides, simulation=simulation, notes=notes)


def collect_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Return the run-config and ``fault-*`` keys a command line sets."""
    return resolve_arguments(args).overrides


def _absolute(path: str | None) -> str | None:
    """Return a path flag made absolute: the apps run in other working directories."""
    return None if path is None else str(Path(path).expanduser().absolute())


def _absolute_model(model: str | None) -> str | None:
    """Return ``--model`` with a relative ``.py`` path made absolute."""
    if model is None:
        return None
    from fedge.shared.model_reference import absolute_model_reference

    return absolute_model_reference(model, Path.cwd())


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
    arguments = resolve_arguments(args)
    settings = arguments.simulation
    run_dir = simulation.simulate(
        arguments.overrides,
        num_clients=settings.get("clients"),
        output_dir=args.output_dir,
        own_data=OwnData(
            data=settings.get("data", ""),
            node_data=settings.get("node-data", ""),
            partition_by=settings.get("partition-by", ""),
        ),
        run_name=args.run_name,
        cpus_per_client=settings.get("cpus-per-client", 1),
        notes=arguments.notes,
        ray_address=settings.get("ray-address", ""),
        verbose=args.verbose,
    )
    status = read_status(run_dir)
    print(f"final central accuracy: {status.get('final_accuracy', float('nan')):.4f}")
    print(f"run folder: {run_dir}")
    return 0

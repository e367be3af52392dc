"""``fedge simulate``: many virtual clients on one machine, on Flower's simulation engine.

The flags map onto run-config keys (:func:`collect_overrides`); the run itself is
:func:`simulations.simulate.simulate`. Choices and defaults shown in ``--help``
come from the run config's own module and ``pyproject.toml``.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

from shared.config import (
    DATASET_FILE,
    DP_MODES,
    PARTITIONINGS,
    STRATEGIES,
    default_run_config,
)
from shared.datasets import BUILTIN_DATASETS
from shared.errors import FedgeError
from simulations import simulate as simulation


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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
            "node and round), fault-seed."
        ),
    )
    p.add_argument(
        "--clients",
        type=int,
        default=10,
        help="number of virtual clients (default: 10)",
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
        "--target-epsilon",
        type=float,
        help="each client's ε budget for the run "
        f"(default: {defaults['target-epsilon']})",
    )
    p.add_argument(
        "--scenario",
        help=(
            "TOML file of run-config (and fault-*) overrides, or the name of a "
            f"packaged scenario: {', '.join(simulation.scenario_names()) or 'none'}"
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
        default=1,
        help="CPU cores reserved per virtual client; bounds parallel clients (default: 1)",
    )
    p.add_argument(
        "--verbose", action="store_true", help="show all of Flower's log lines"
    )
    p.set_defaults(run=run)


def collect_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Scenario file, then named flags, then ``--set``: later ones win."""
    overrides: dict[str, Any] = {}
    if args.scenario:
        overrides.update(simulation.load_scenario(args.scenario))
    named = {
        "num-server-rounds": args.rounds,
        "dataset": args.dataset,
        "partitioning": args.partitioning,
        "dirichlet-alpha": args.alpha,
        "strategy": args.strategy,
        "dp-mode": args.dp_mode,
        "target-epsilon": args.target_epsilon,
    }
    overrides.update({k: v for k, v in named.items() if v is not None})
    for setting in args.settings:
        key, sep, value = setting.partition("=")
        if not sep:
            raise FedgeError(f"--set expects KEY=VALUE, got {setting!r}")
        overrides[key.strip()] = _parse_toml_value(value.strip())
    return overrides


def _parse_toml_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word is a string, as a user would expect


def run(args: argparse.Namespace) -> int:
    """CLI entry: run, then print the final accuracy and where the results are."""
    run_dir = simulation.simulate(
        collect_overrides(args),
        num_clients=args.clients,
        output_dir=args.output_dir,
        run_name=args.run_name,
        cpus_per_client=args.cpus_per_client,
        verbose=args.verbose,
    )
    status = simulation.read_status(run_dir)
    print(f"final central accuracy: {status.get('final_accuracy', float('nan')):.4f}")
    print(f"run folder: {run_dir}")
    return 0

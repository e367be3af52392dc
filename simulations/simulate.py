"""``fedge simulate``: many virtual clients on one machine, on Flower's simulation engine.

The very same ServerApp and ClientApp as a deployment run, submitted with
``flwr run`` to a private SuperLink in simulation mode that this command starts on
a free loopback port and stops at the end. Progress lines stream as rounds end;
everything lands in the run folder.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.config import RunConfig, default_run_config, from_run_config
from shared.errors import FedgeError
from simulations.flower_processes import (
    flwr_run_command,
    running_superlink,
    write_run_config,
)

APP_DIR = Path(__file__).resolve().parent.parent
FLOWER_LOG = "flower.log"
# Lines worth showing live: fedge's own progress, and Flower's warnings and errors.
_SHOW = re.compile(
    r"fedge:|ERROR|Error|Traceback|WARNING.*(fail|dropp|timeout)", re.IGNORECASE
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``fedge simulate``."""
    p = subparsers.add_parser(
        "simulate",
        help="run a federation of virtual clients on this machine",
        description=(
            "Run the fedge ServerApp and ClientApp on Flower's simulation engine with "
            "N virtual clients. Any run-config key (see pyproject.toml "
            "[tool.flwr.app.config]) can be set with --set KEY=VALUE or a --scenario file."
        ),
    )
    p.add_argument(
        "--clients",
        type=int,
        default=10,
        help="number of virtual clients (default: 10)",
    )
    p.add_argument(
        "--rounds", type=int, help="server rounds (default: num-server-rounds)"
    )
    p.add_argument("--dataset", help="digits | breast-cancer (default: digits)")
    p.add_argument("--partitioning", help="iid | dirichlet | shards (default: iid)")
    p.add_argument(
        "--alpha", type=float, help="Dirichlet concentration α (default: 0.5)"
    )
    p.add_argument("--strategy", help="aggregation strategy (default: fedavg)")
    p.add_argument("--dp-mode", help="none | sample | central")
    p.add_argument(
        "--target-epsilon", type=float, help="each client's ε budget for the run"
    )
    p.add_argument("--scenario", type=Path, help="TOML file of run-config overrides")
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
        default=Path("runs"),
        help="parent of run folders (default: runs)",
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
        overrides.update(load_scenario(args.scenario))
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


def load_scenario(path: Path) -> dict[str, Any]:
    """Read a scenario: a flat TOML table of run-config keys."""
    try:
        with path.open("rb") as f:
            return dict(tomllib.load(f))
    except FileNotFoundError as e:
        raise FedgeError(f"scenario file not found: {path}") from e
    except tomllib.TOMLDecodeError as e:
        raise FedgeError(f"scenario file {path} is not valid TOML: {e}") from e


def _parse_toml_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word is a string, as a user would expect


def preflight(config: RunConfig, num_clients: int) -> None:
    """Refuse bad data or partitions before any process starts or round runs."""
    from server.reference_data import load_reference_data
    from shared.datasets import load_builtin
    from shared.partition import partition_indices

    if num_clients < 1:
        raise FedgeError(f"--clients must be >= 1, got {num_clients}")
    load_reference_data(config.data)
    if config.data.dataset != "file":
        train = load_builtin(config.data.dataset, "train")
        partition_indices(
            train.y,
            num_clients,
            config.data.partitioning,
            seed=config.data.partition_seed,
            alpha=config.data.dirichlet_alpha,
            shards_per_client=config.data.shards_per_client,
        )
    if config.strategy.min_nodes > num_clients:
        raise FedgeError(
            f"'min-nodes' = {config.strategy.min_nodes} exceeds --clients {num_clients}; "
            "the run would wait for nodes that never come"
        )


def simulate(
    overrides: dict[str, Any],
    *,
    num_clients: int,
    output_dir: Path,
    run_name: str = "",
    cpus_per_client: int = 1,
    verbose: bool = False,
    echo: Any = print,
) -> Path:
    """Run a simulation and return its run folder.

    Raises
    ------
    FedgeError
        On a bad config or data (before anything runs), or when the run fails.
    """
    run_name = run_name or time.strftime("%Y%m%d-%H%M%S")
    run_dir = output_dir.expanduser().resolve() / run_name
    overrides = {**overrides, "output-dir": str(run_dir.parent), "run-name": run_name}
    overrides.setdefault(
        "min-nodes", min(num_clients, int(default_run_config()["min-nodes"]))
    )
    config = from_run_config(overrides, fill_defaults=True)
    preflight(config, num_clients)
    run_dir.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="fedge-sim-") as tmp,
        running_superlink(Path(tmp), simulation=True) as link,
    ):
        command = flwr_run_command(
            APP_DIR,
            write_run_config(Path(tmp) / "run-config.toml", overrides),
            federation_config={
                "num-supernodes": num_clients,
                "client-resources-num-cpus": cpus_per_client,
            },
        )
        echo(
            f"fedge simulate: {num_clients} clients, {config.run.num_server_rounds} rounds, "
            f"{config.data.dataset} ({config.data.partitioning}), {config.strategy.name}, "
            f"dp-mode {config.dp.mode}"
        )
        _stream(command, link.env, run_dir / FLOWER_LOG, verbose=verbose, echo=echo)
    status = read_status(run_dir)
    if status.get("state") != "complete":
        raise FedgeError(
            f"run did not complete ({status.get('state', 'unknown')}: "
            f"{status.get('message') or 'see ' + str(run_dir / FLOWER_LOG)})"
        )
    return run_dir


def _stream(
    command: list[str], env: dict[str, str], log_path: Path, *, verbose: bool, echo: Any
) -> None:
    with (
        log_path.open("w") as log,
        subprocess.Popen(
            command,
            env=env,
            cwd=APP_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as process,
    ):
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            clean = re.sub(r"\x1b\[[0-9;]*m", "", line).rstrip()
            if verbose or _SHOW.search(clean):
                echo(clean)
    if process.returncode != 0:
        raise FedgeError(
            f"`flwr run` exited with code {process.returncode}; see {log_path}"
        )


def read_status(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "status.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def run(args: argparse.Namespace) -> int:
    """CLI entry: run, then print the final accuracy and where the results are."""
    run_dir = simulate(
        collect_overrides(args),
        num_clients=args.clients,
        output_dir=args.output_dir,
        run_name=args.run_name,
        cpus_per_client=args.cpus_per_client,
        verbose=args.verbose,
    )
    status = read_status(run_dir)
    print(f"final central accuracy: {status.get('final_accuracy', float('nan')):.4f}")
    print(f"run folder: {run_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fedge simulate`` alone (``python -m simulations.simulate``)."""
    from shared.cli import main as cli_main

    return cli_main(["simulate", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())

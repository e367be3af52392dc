"""What one simulation is asked for, by flag or by keyword, resolved in one place.

``fedge simulate`` (:mod:`fedge.cli.simulate`) and :func:`fedge.simulate` both
fill a :class:`SimulateOptions` and hand it to :func:`run_simulation`: the
scenario file, then the named options, then ``--set``/``set=`` keys, later ones
winning (:func:`resolve_options`), then :func:`fedge.simulations.simulate.simulate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedge.shared.model_reference import absolute_model_reference
from fedge.simulations import simulate as simulation
from fedge.simulations.own_data import OwnData
from fedge.simulations.scenario_file import SIMULATION_KEYS, read_scenario


@dataclass(frozen=True)
class SimulateOptions:
    """The options of ``fedge simulate``, one field per flag (None: not given).

    Attributes
    ----------
    clients, rounds : int or None
        ``--clients`` (virtual clients) and ``--rounds`` (``num-server-rounds``).
    dataset, partitioning, strategy, dp_mode, model : str or None
        ``--dataset``, ``--partitioning``, ``--strategy``, ``--dp-mode``,
        ``--model`` (``MODULE:CALLABLE`` or ``FILE.py:CALLABLE`` for your own).
    alpha, target_epsilon : float or None
        ``--alpha`` (``dirichlet-alpha``) and ``--target-epsilon``.
    data, node_data, eval_data : str or None
        ``--data``, ``--node-data``, ``--eval-data``: your own files.
    label_column, partition_by : str or None
        ``--label-column`` and ``--partition-by``.
    cpus_per_client : int or None
        ``--cpus-per-client``.
    ray_address : str or None
        ``--ray-address``: an existing Ray cluster's head.
    scenario : str or None
        ``--scenario``: a TOML file or a packaged scenario's name.
    settings : sequence of (str, object)
        ``--set KEY=VALUE`` pairs, values parsed, in the order given.
    """

    clients: int | None = None
    rounds: int | None = None
    dataset: str | None = None
    partitioning: str | None = None
    alpha: float | None = None
    strategy: str | None = None
    dp_mode: str | None = None
    target_epsilon: float | None = None
    model: str | None = None
    data: str | None = None
    node_data: str | None = None
    eval_data: str | None = None
    label_column: str | None = None
    partition_by: str | None = None
    cpus_per_client: int | None = None
    ray_address: str | None = None
    scenario: str | None = None
    settings: Sequence[tuple[str, Any]] = ()


@dataclass(frozen=True)
class Arguments:
    """What a simulation asks for, scenario file merged in.

    Attributes
    ----------
    overrides : dict
        Run-config and ``fault-*`` keys.
    simulation : dict
        :data:`~fedge.simulations.scenario_file.SIMULATION_KEYS` that were set.
    notes : list of str
        One note per setting an option changed from the scenario file's value,
        e.g. ``"clients 5 from --clients (scenario: 3)"``.
    """

    overrides: dict[str, Any]
    simulation: dict[str, Any]
    notes: list[str]


def resolve_options(options: SimulateOptions) -> Arguments:
    """Scenario file, then named options, then ``settings``: later ones win.

    Raises
    ------
    FedgeError
        The scenario file is missing or invalid.
    """
    scenario = read_scenario(options.scenario) if options.scenario else None
    overrides = dict(scenario.overrides) if scenario else {}
    simulation_keys = dict(scenario.simulation) if scenario else {}
    named = {
        "num-server-rounds": ("--rounds", options.rounds),
        "dataset": ("--dataset", options.dataset),
        "partitioning": ("--partitioning", options.partitioning),
        "dirichlet-alpha": ("--alpha", options.alpha),
        "strategy": ("--strategy", options.strategy),
        "dp-mode": ("--dp-mode", options.dp_mode),
        "target-epsilon": ("--target-epsilon", options.target_epsilon),
        "model": ("--model", _absolute_model(options.model)),
        "clients": ("--clients", options.clients),
        "cpus-per-client": ("--cpus-per-client", options.cpus_per_client),
        "data": ("--data", _absolute(options.data)),
        "node-data": ("--node-data", _absolute(options.node_data)),
        "partition-by": ("--partition-by", options.partition_by),
        "eval-data-path": ("--eval-data", _absolute(options.eval_data)),
        "label-column": ("--label-column", options.label_column),
        "ray-address": ("--ray-address", options.ray_address),
    }
    # key -> (flag, value), in the order they apply
    flags = {k: fv for k, fv in named.items() if fv[1] is not None}
    for key, value in options.settings:
        # `--set clients=3` works as `--clients 3` does.
        flags[key.strip()] = ("--set", value)
    notes = []
    for key, (flag, value) in flags.items():
        target = simulation_keys if key in SIMULATION_KEYS else overrides
        if key in target and target[key] != value:
            notes.append(f"{key} {value!r} from {flag} (scenario: {target[key]!r})")
        target[key] = value
    return Arguments(overrides=overrides, simulation=simulation_keys, notes=notes)


def run_simulation(
    options: SimulateOptions,
    *,
    output_dir: Path,
    run_name: str = "",
    verbose: bool = False,
    echo: Callable[[str], Any] = print,
) -> Path:
    """Resolve ``options`` and run the simulation; return its run folder.

    Parameters
    ----------
    options : SimulateOptions
        What to run.
    output_dir : Path
        Parent of the run folder.
    run_name : str, default ""
        Run folder name; empty = a timestamp.
    verbose : bool, default False
        Echo every Flower log line, not only fedge's progress and problems.
    echo : callable, default print
        Where the progress lines go (one per round: accuracy, ε, replies,
        time), as they come.

    Returns
    -------
    Path
        The finished run's folder.

    Raises
    ------
    FedgeError
        As :func:`fedge.simulations.simulate.simulate`.
    """
    arguments = resolve_options(options)
    settings = arguments.simulation
    # Looked up on the module at call time: tests replace the engine's entry.
    return simulation.simulate(
        arguments.overrides,
        num_clients=settings.get("clients"),
        output_dir=output_dir,
        own_data=OwnData(
            data=settings.get("data", ""),
            node_data=settings.get("node-data", ""),
            partition_by=settings.get("partition-by", ""),
        ),
        run_name=run_name,
        cpus_per_client=settings.get("cpus-per-client", 1),
        notes=arguments.notes,
        ray_address=settings.get("ray-address", ""),
        verbose=verbose,
        echo=echo,
    )


def _absolute(path: str | None) -> str | None:
    """Return a path option made absolute: the apps run in other working directories."""
    return None if path is None else str(Path(path).expanduser().absolute())


def _absolute_model(model: str | None) -> str | None:
    """Return ``--model`` with a relative ``.py`` path made absolute."""
    if model is None:
        return None
    return absolute_model_reference(model, Path.cwd())

"""Scenario files: everything that shapes one simulated run, in one TOML table.

A scenario is a flat TOML table of three kinds of keys:

- run-config keys (``[tool.flwr.app.config]`` in ``pyproject.toml``), passed to
  the ServerApp and ClientApp as ``--set`` would pass them;
- ``fault-*`` keys (:mod:`fedge.simulations.fault_injection`);
- simulation keys (:data:`SIMULATION_KEYS`): how many virtual clients, the CPU
  share of each, whose data they hold, and which Ray cluster runs them. These are
  the ``fedge simulate`` flags of the same names.

Relative paths in a scenario (``data``, ``node-data``, ``eval-data-path``,
``initial-weights``, ``sign-key``, and the ``.py`` file of ``model =
"nets.py:Net"``) are relative to the scenario file's folder, so a scenario and
its data travel together. The file's first comment line is its one-line description
(``fedge simulate --list``).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedge.shared.config import closest_key
from fedge.shared.config_keys import CONFIG_KEYS
from fedge.shared.errors import ConfigError, FedgeError
from fedge.shared.model_reference import absolute_model_reference
from fedge.simulations.fault_config import FAULT_DEFAULTS

SCENARIOS_DIR = Path(__file__).resolve().parent / "scenarios"
DEFAULT_CLIENTS = 10
# Simulation keys and their types; each is also a `fedge simulate` flag.
SIMULATION_KEYS: dict[str, type] = {
    "clients": int,  # --clients: virtual clients (simulated SuperNodes)
    "cpus-per-client": int,  # --cpus-per-client: cores Ray reserves per client
    "data": str,  # --data: one file split among the clients
    "node-data": str,  # --node-data: a folder or glob, one file per client
    "partition-by": str,  # --partition-by: one client per value of this column
    "ray-address": str,  # --ray-address: an existing Ray cluster
}
PATH_KEYS = ("data", "node-data", "eval-data-path", "initial-weights", "sign-key")


@dataclass(frozen=True)
class Scenario:
    """One scenario file, read and checked.

    Attributes
    ----------
    path : Path
        The file.
    description : str
        Its first comment line, without ``#``; empty if it has none.
    overrides : dict
        Run-config and ``fault-*`` keys.
    simulation : dict
        The :data:`SIMULATION_KEYS` it sets, paths made absolute.
    """

    path: Path
    description: str
    overrides: dict[str, Any]
    simulation: dict[str, Any]

    @property
    def name(self) -> str:
        """The file name without ``.toml``: what ``--scenario`` takes."""
        return self.path.stem

    @property
    def clients(self) -> int | None:
        """The client count the scenario sets, or None for the default."""
        value = self.simulation.get("clients")
        return None if value is None else int(value)


def scenario_names() -> list[str]:
    """Names of the packaged scenarios (``simulations/scenarios/*.toml``)."""
    return sorted(p.stem for p in SCENARIOS_DIR.glob("*.toml"))


def resolve_scenario(scenario: str | Path) -> Path:
    """Return a scenario file path, or a bare name resolved in the packaged scenarios.

    Raises
    ------
    FedgeError
        If neither a file of that path nor a packaged scenario of that name exists.
    """
    path = Path(scenario)
    if path.is_file():
        return path
    text = str(scenario)
    if "/" not in text and "\\" not in text:
        packaged = SCENARIOS_DIR / (text if text.endswith(".toml") else f"{text}.toml")
        if packaged.is_file():
            return packaged
    raise FedgeError(
        f"scenario {text!r} is neither a file nor a packaged scenario; "
        f"packaged: {', '.join(scenario_names()) or 'none'}"
    )


def read_scenario(scenario: str | Path) -> Scenario:
    """Read a scenario file (or packaged name) and check its keys and their types.

    Raises
    ------
    FedgeError
        If the file is missing or not valid TOML.
    ConfigError
        If it has a key no run config, fault or simulation option knows (naming
        the file, the key and the closest valid key), or a simulation key of the
        wrong type or range.
    """
    path = resolve_scenario(scenario)
    try:
        text = path.read_text()
        table = tomllib.loads(text)
    except FileNotFoundError as e:
        raise FedgeError(f"scenario file not found: {path}") from e
    except tomllib.TOMLDecodeError as e:
        raise FedgeError(f"scenario file {path} is not valid TOML: {e}") from e
    _check_keys(path, table)
    simulation = {k: table[k] for k in SIMULATION_KEYS if k in table}
    overrides = {k: v for k, v in table.items() if k not in SIMULATION_KEYS}
    for key in PATH_KEYS:
        for part in (simulation, overrides):
            if part.get(key):
                part[key] = str((path.parent / str(part[key])).resolve())
    if isinstance(overrides.get("model"), str):  # a .py file: beside the scenario
        overrides["model"] = absolute_model_reference(overrides["model"], path.parent)
    return Scenario(
        path=path,
        description=_description(text),
        overrides=overrides,
        simulation=simulation,
    )


def load_scenario(scenario: str | Path) -> dict[str, Any]:
    """Return the run-config and ``fault-*`` keys of a scenario (no simulation keys)."""
    return read_scenario(scenario).overrides


def _check_keys(path: Path, table: dict[str, Any]) -> None:
    valid = (*CONFIG_KEYS, *FAULT_DEFAULTS, *SIMULATION_KEYS)
    problems = []
    for key, value in table.items():
        if key not in valid:
            match = closest_key(key, valid)
            hint = (
                f"did you mean {match!r}?"
                if match
                else "valid keys are the run-config keys of pyproject.toml "
                "[tool.flwr.app.config], fault-* keys and " + ", ".join(SIMULATION_KEYS)
            )
            problems.append(f"unknown key {key!r} ({hint})")
            continue
        kind = SIMULATION_KEYS.get(key)
        if kind is None:
            continue  # run-config and fault keys are checked where they are used
        if not isinstance(value, kind) or isinstance(value, bool):
            problems.append(f"{key!r} must be {kind.__name__}, got {value!r}")
        elif isinstance(value, int) and value < 1:
            problems.append(f"{key!r} must be >= 1, got {value}")
    if problems:
        raise ConfigError(f"scenario {path}: " + "; ".join(problems) + ".", problems)


def _description(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def list_scenarios() -> list[Scenario]:
    """Every packaged scenario, read and checked, by name."""
    return [read_scenario(name) for name in scenario_names()]


def format_scenario_list(scenarios: list[Scenario]) -> str:
    """One line per scenario: name, client count and description."""
    width = max((len(s.name) for s in scenarios), default=0)
    lines = []
    for s in scenarios:
        clients = f"{s.clients} clients" if s.clients else f"{DEFAULT_CLIENTS} clients*"
        lines.append(f"{s.name:<{width}}  {clients:>13}  {s.description}")
    if any(s.clients is None for s in scenarios):
        lines.append("* the default: the scenario does not set 'clients'")
    return "\n".join(lines)

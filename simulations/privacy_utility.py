"""Privacy–utility study on the digits: final accuracy against each client's ε.

For 3 and for 10 IID clients, one federated run per privacy level (ε = 1, 3, 8
and no DP), each through :func:`simulations.simulate.simulate`, i.e. the real
ServerApp and ClientApp on Flower's simulation engine. Each federation size has
its tuned settings in a packaged scenario,
``simulations/scenarios/dp-digits-<N>-clients.toml`` (a client of 3 holds 405
training digits, one of 10 holds 121: the best schedule differs), so one cell of
the table is rerun with ``fedge simulate --scenario dp-digits-3-clients
--clients 3 --target-epsilon 3``. "No DP" keeps every other setting and sets
``dp-mode = "none"``.

Each cell is one run: DP noise is drawn fresh from OS entropy (a seeded noise
would void the guarantee), so a rerun differs by a few points of accuracy.

Outputs: ``benchmarks/results/privacy_utility.json`` (every figure, each run's
folder) and, for a full study, the Markdown table
``simulations/privacy_utility.md``, which the README quotes.

Run: ``python -m simulations.privacy_utility`` (about 10 minutes on 2 cores),
``--quick`` for a smoke run of 2 rounds of 1 local epoch each (its figures are
not the study's; the Markdown table is left alone).
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shared.atomic_io import atomic_write_json, atomic_write_text
from shared.errors import ConfigError, FedgeError
from shared.run_folder import COMPLETE
from simulations.engine import SimulationEngine, sharing
from simulations.scenario_file import load_scenario
from simulations.simulate import simulate
from simulations.study_cell import (
    cell_summary,
    epsilon_label,
    epsilon_slug,
    format_cell,
    run_cell,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS_PATH = ROOT / "benchmarks" / "results" / "privacy_utility.json"
TABLE_PATH = Path(__file__).resolve().parent / "privacy_utility.md"
RUNS_DIR = Path("runs") / "privacy-utility"
EPSILONS = (1.0, 3.0, 8.0, math.inf)
CLIENT_COUNTS = (3, 10)
# --quick: every cell, but a run short enough only to prove the study works.
QUICK_SETTINGS = {"num-server-rounds": 2, "local-epochs": 1}
# The keys the table's settings line names, in this order.
SETTING_KEYS = (
    "num-server-rounds",
    "local-epochs",
    "batch-size",
    "learning-rate",
    "momentum",
    "max-grad-norm",
    "activation",
    "model",
    "strategy",
)


def scenario_name(num_clients: int) -> str:
    """Return the packaged scenario with the tuned settings for ``num_clients``."""
    return f"dp-digits-{num_clients}-clients"


def study_settings(num_clients: int, *, quick: bool = False) -> dict[str, Any]:
    """Return the run-config overrides every cell of this federation size shares.

    ``quick`` replaces the schedule with :data:`QUICK_SETTINGS`.

    Raises
    ------
    FedgeError
        If no tuned scenario exists for ``num_clients``.
    """
    if num_clients not in CLIENT_COUNTS:
        raise FedgeError(
            f"No tuned settings for {num_clients} clients: the study has them for "
            f"{', '.join(map(str, CLIENT_COUNTS))} (scenarios "
            f"{', '.join(scenario_name(n) for n in CLIENT_COUNTS)})."
        )
    settings = load_scenario(scenario_name(num_clients))
    return {**settings, **(QUICK_SETTINGS if quick else {})}


def cell_overrides(settings: dict[str, Any], target_epsilon: float) -> dict[str, Any]:
    """One cell's overrides: DP-SGD at ``target_epsilon``, or no DP for ∞.

    Raises
    ------
    ConfigError
        If ``target_epsilon`` is not > 0.
    """
    if not target_epsilon > 0:
        raise ConfigError(f"target ε must be > 0 or inf, got {target_epsilon}.")
    if math.isinf(target_epsilon):
        return {**settings, "dp-mode": "none"}
    return {**settings, "dp-mode": "sample", "target-epsilon": float(target_epsilon)}


def parse_epsilon(text: str) -> float:
    """Return a privacy level from the command line: a number > 0, or inf / none / ∞.

    Raises
    ------
    ConfigError
        If ``text`` is neither.
    """
    word = text.strip().lower()
    if word in ("inf", "none", "∞"):
        return math.inf
    try:
        value = float(word)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise ConfigError(
            f"ε must be a number > 0, or inf / none for no DP; got {text!r}."
        )
    return value


def format_sigma(cell: dict[str, Any] | None) -> str:
    """Return the largest client noise multiplier, ``3.05``; ``0`` without DP; else ``—``."""
    if cell is None or cell.get("state") != COMPLETE:
        return "—"
    sigma = cell.get("noise_multiplier")
    return "0" if sigma is None else f"{sigma:.2f}"


def build_table(results: dict[str, Any]) -> str:
    """Return the Markdown page: the accuracy table, the settings, how to rerun.

    Parameters
    ----------
    results : dict
        As :func:`run_study` returns: ``epsilons``, ``client_counts``,
        ``settings`` (per client count, keyed by its string), ``cells`` (a list of
        dicts with ``clients``, ``target_epsilon`` and :func:`read_cell`'s
        figures), ``quick``, ``measured`` and ``wall_time_s``.
    """
    epsilons = [_epsilon_from_json(e) for e in results["epsilons"]]
    cells = {
        (c["clients"], _epsilon_from_json(c["target_epsilon"])): c
        for c in results["cells"]
    }
    lines = [
        "# Privacy–utility on the digits",
        "",
        "Final central accuracy on the 450 held-out test digits, IID clients, "
        'DP-SGD on every client (`dp-mode = "sample"`). Examples per client: the '
        "smallest client's training examples (90%; 10% is its local test split). "
        "In brackets: the largest ε any client spent over the whole run (δ per "
        "client ≤ 1/(10 n)). One run per cell: DP noise is fresh in every run, so "
        "a rerun moves by a few points.",
        "",
    ]
    if results.get("quick"):
        lines += [
            "**Quick run** (" + _settings_text(QUICK_SETTINGS) + "): a smoke test of "
            "the study, not its figures.",
            "",
        ]
    header = ["clients", "examples per client", *map(epsilon_label, epsilons)]
    lines += [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" for _ in header) + "|",
    ]
    for n in results["client_counts"]:
        row = [cells.get((n, e)) for e in epsilons]
        examples = next(
            (
                c["examples_per_client"]
                for c in row
                if c and c.get("examples_per_client")
            ),
            None,
        )
        lines.append(
            "| "
            + " | ".join(
                [str(n), "—" if examples is None else str(examples)]
                + [format_cell(c) for c in row]
            )
            + " |"
        )
    lines += [
        "",
        "Noise multiplier σ each client drew with (calibrated once for every "
        "step of the planned run):",
        "",
        "| clients | " + " | ".join(map(epsilon_label, epsilons)) + " |",
        "|" + "|".join("---:" for _ in range(len(epsilons) + 1)) + "|",
    ]
    for n in results["client_counts"]:
        sigmas = [format_sigma(cells.get((n, e))) for e in epsilons]
        lines.append("| " + " | ".join([str(n), *sigmas]) + " |")
    lines += [
        "",
        "Settings (other keys at their defaults; FedAvg over every client each round):",
        "",
    ]
    for n in results["client_counts"]:
        settings = results["settings"].get(str(n), {})
        lines.append(
            f"- {n} clients, scenario `{scenario_name(n)}`: {_settings_text(settings)}"
        )
    first = results["client_counts"][0]
    lines += [
        "",
        "Reproduce: `python -m simulations.privacy_utility` "
        f"({results.get('wall_time_s', 0) / 60:.0f} min on 2 cores, measured "
        f"{results.get('measured', '?')}); one cell: `fedge simulate --scenario "
        f"{scenario_name(first)} --clients {first} --target-epsilon 3`.",
        "",
    ]
    return "\n".join(lines)


def _settings_text(settings: dict[str, Any]) -> str:
    keys = [k for k in SETTING_KEYS if k in settings]
    return ", ".join(f"{k} = {settings[k]}" for k in keys)


def _epsilon_to_json(value: float) -> float | str:
    return "inf" if math.isinf(value) else value


def _epsilon_from_json(value: float | str) -> float:
    return math.inf if value == "inf" else float(value)


def default_study_name() -> str:
    """Return a fresh folder name for a study: the local time to the second."""
    return time.strftime("%Y%m%d-%H%M%S")


def run_study(
    *,
    client_counts: Sequence[int] = CLIENT_COUNTS,
    epsilons: Sequence[float] = EPSILONS,
    quick: bool = False,
    output_dir: Path = RUNS_DIR,
    study_name: str = "",
    simulate_fn: Callable[..., Path] = simulate,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every (clients, ε) cell, one after the other; return all figures.

    A run that fails is recorded as failed and the study goes on.

    Parameters
    ----------
    client_counts : sequence of int
        Federation sizes; each needs a ``dp-digits-<N>-clients`` scenario.
    epsilons : sequence of float
        Each client's ε budget for the run; ``inf`` = no DP.
    quick : bool, default False
        2 rounds of 1 local epoch instead of the tuned schedule.
    output_dir : Path
        Parent of the study's folder.
    study_name : str, default ""
        The study's folder under ``output_dir``, holding one run folder per
        cell (``<N>c-eps<ε>``); empty = a timestamp. Each study gets fresh
        folders: a run folder that already holds a run is refused.

    Raises
    ------
    FedgeError
        If the study's folder already exists.
    simulate_fn : callable
        :func:`simulations.simulate.simulate` (tests pass a stand-in).
    echo : callable
        Where progress lines go.
    """
    settings = {n: study_settings(n, quick=quick) for n in client_counts}
    study_dir = output_dir / (study_name or default_study_name())
    if study_dir.exists():
        raise FedgeError(
            f"Study folder {study_dir} already exists; its runs would be refused. "
            "Choose another study name or remove the folder."
        )
    cells = []
    started = time.monotonic()
    # One SuperLink and Ray cluster for every cell, not one per cell.
    with SimulationEngine() as engine, sharing(engine):
        for n, epsilon in itertools.product(client_counts, epsilons):
            name = f"{n}c-{epsilon_slug(epsilon)}"
            echo(f"privacy-utility: {n} clients, {epsilon_label(epsilon)} ...")
            cell = run_cell(
                cell_overrides(settings[n], epsilon),
                num_clients=n,
                output_dir=study_dir,
                name=name,
                simulate_fn=simulate_fn,
            )
            cell.update(clients=n, target_epsilon=_epsilon_to_json(epsilon))
            echo(
                f"privacy-utility: {n} clients, {epsilon_label(epsilon)}: "
                + cell_summary(cell)
            )
            cells.append(cell)
    return {
        "name": "privacy_utility",
        "quick": quick,
        "measured": time.strftime("%Y-%m-%d"),
        "wall_time_s": round(time.monotonic() - started, 1),
        "study_dir": str(study_dir),
        "client_counts": list(client_counts),
        "epsilons": [_epsilon_to_json(e) for e in epsilons],
        "settings": {str(n): s for n, s in settings.items()},
        "cells": cells,
    }


def _epsilon_argument(text: str) -> float:
    try:
        return parse_epsilon(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _clients_argument(text: str) -> int:
    if not text.strip().isdigit() or int(text) not in CLIENT_COUNTS:
        raise argparse.ArgumentTypeError(
            f"the study has tuned settings for {list(CLIENT_COUNTS)} clients, "
            f"got {text!r}."
        )
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m simulations.privacy_utility``."""
    parser = argparse.ArgumentParser(
        prog="python -m simulations.privacy_utility",
        description=(
            "Final central accuracy on the digits at each client ε budget, for 3 "
            "and 10 IID clients, with the tuned DP-SGD settings. Writes "
            f"{RESULTS_PATH.relative_to(ROOT)} and, for the full study, "
            f"{TABLE_PATH.relative_to(ROOT)}."
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 rounds of 1 local epoch: checks the study runs (figures not the study's)",
    )
    parser.add_argument(
        "--clients",
        type=_clients_argument,
        nargs="+",
        default=list(CLIENT_COUNTS),
        help=f"federation sizes (default: {' '.join(map(str, CLIENT_COUNTS))})",
    )
    parser.add_argument(
        "--epsilons",
        type=_epsilon_argument,
        nargs="+",
        default=list(EPSILONS),
        help="each client's ε budget; inf = no DP (default: 1 3 8 inf)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=RUNS_DIR,
        help=f"parent of the study's folder of runs (default: {RUNS_DIR})",
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS_PATH, help="JSON results file"
    )
    parser.add_argument(
        "--table",
        type=Path,
        default=None,
        help=(
            "Markdown file for the table (default: "
            f"{TABLE_PATH.relative_to(ROOT)}, written only by a full, non-quick study)"
        ),
    )
    return parser


def table_path(args: argparse.Namespace) -> Path | None:
    """Where to write the Markdown: ``--table``, else the README's only for a full study.

    A quick or partial run must not replace the committed table.
    """
    if args.table is not None:
        table: Path = args.table
        return table
    full = sorted(args.clients) == sorted(CLIENT_COUNTS) and sorted(
        args.epsilons
    ) == sorted(EPSILONS)
    return TABLE_PATH if full and not args.quick else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study, write its files, print the table; 1 if any run failed."""
    import torch

    torch.set_num_threads(1)  # the study's own process; clients set theirs
    args = build_parser().parse_args(argv)
    results = run_study(
        client_counts=args.clients,
        epsilons=args.epsilons,
        quick=args.quick,
        output_dir=args.output_dir,
    )
    table = build_table(results)
    atomic_write_json(args.results, results)
    written = [str(args.results)]
    markdown = table_path(args)
    if markdown is not None:
        atomic_write_text(markdown, table)
        written.append(str(markdown))
    print()
    print(table)
    print("written: " + ", ".join(written))
    failed = [c for c in results["cells"] if c.get("state") != COMPLETE]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

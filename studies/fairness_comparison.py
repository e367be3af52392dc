"""FedAvg against q-FedAvg on strongly non-IID digits: mean and worst-client accuracy.

Runs the packaged scenario ``fairness-shards`` (10 clients, 2 label shards each)
once per strategy and seed through :func:`fedge.simulations.simulate.simulate` (the
real ServerApp and ClientApp on Flower's simulation engine), reads each run's
last ``metrics.csv`` row (central accuracy and the per-client summary on the
clients' own test splits), and writes ``benchmarks/results/fairness_comparison
.json`` and the Markdown table ``studies/fairness_comparison.md`` that the
README quotes, with the number of runs behind each figure.

Run: ``python -m fedge.studies.fairness_comparison`` (``--seeds 0 1 2`` for
more runs per strategy; each seed changes the model initialisation and the
node sampling, not the partition). ``fedge report`` on the run folders
overlays them round by round.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fedge.shared.atomic_io import atomic_write_json, atomic_write_text
from fedge.shared.run_folder import (
    CENTRAL_ACCURACY,
    CLIENT_ACCURACY_MEAN,
    CLIENT_ACCURACY_P10,
    CLIENT_ACCURACY_WORST,
    METRICS_CSV_FILE,
)
from fedge.simulations.scenario_file import read_scenario
from fedge.studies.study_cell import (
    RESULTS_DIR,
    TABLES_DIR,
    cell_summary,
    completed,
    format_mean_range,
    run_cell,
)

RESULTS_PATH = RESULTS_DIR / "fairness_comparison.json"
TABLE_PATH = TABLES_DIR / "fairness_comparison.md"
RUNS_DIR = Path("runs") / "fairness-comparison"
SCENARIO = "fairness-shards"
STRATEGIES = ("fedavg", "qfedavg")
FIGURES = {
    CENTRAL_ACCURACY: "central accuracy",
    CLIENT_ACCURACY_MEAN: "client mean",
    CLIENT_ACCURACY_WORST: "worst client",
    CLIENT_ACCURACY_P10: "10th percentile",
}


def final_figures(run_dir: Path) -> dict[str, float]:
    """Return the compared figures of a run's last round."""
    last = pd.read_csv(run_dir / METRICS_CSV_FILE).iloc[-1]
    return {column: float(last[column]) for column in FIGURES}


def build_table(results: dict[str, list[dict[str, float]]], settings: str) -> str:
    """Return the Markdown table: mean (and range over runs) of each figure."""
    lines = [
        f"Scenario `{SCENARIO}` ({settings}); last round; per-client figures on "
        "each client's own test split, every client counted once.",
        "",
        "| strategy | runs | " + " | ".join(FIGURES.values()) + " |",
        "|---|---|" + "---|" * len(FIGURES),
    ]
    for strategy, runs in results.items():
        cells = [format_mean_range([r[column] for r in runs]) for column in FIGURES]
        lines.append(f"| {strategy} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_comparison(seeds: Sequence[int], runs_dir: Path) -> dict[str, Any]:
    """Run every strategy for every seed; return the figures and run folders.

    A run that fails is listed under ``failed`` and left out of the figures.
    """
    scenario = read_scenario(SCENARIO)
    results: dict[str, list[dict[str, float]]] = {}
    folders: dict[str, list[str]] = {}
    failed: list[dict[str, Any]] = []
    for strategy in STRATEGIES:
        for seed in seeds:
            name = f"{strategy}-seed{seed}"
            print(f"{name} ...", flush=True)
            cell = run_cell(
                {
                    **scenario.overrides,
                    "strategy": strategy,
                    "model-seed": seed,
                    "sampler-seed": seed,
                },
                num_clients=scenario.clients,
                output_dir=runs_dir,
                name=name,
            )
            print(f"{name}: {cell_summary(cell)}", flush=True)
            if not completed(cell):
                failed.append({"run": name, **cell})
                continue
            run_dir = Path(cell["run_dir"])
            results.setdefault(strategy, []).append(final_figures(run_dir))
            folders.setdefault(strategy, []).append(str(run_dir))
    return {
        "scenario": SCENARIO,
        "settings": scenario.overrides,
        "results": results,
        "runs": folders,
        "failed": failed,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and write the results and the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="one run per strategy and seed; a seed sets the model initialisation "
        "and the node sampling (default: 0)",
    )
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=RUNS_DIR,
        help=f"parent of the run folders (default: {RUNS_DIR})",
    )
    args = parser.parse_args(argv)
    outcome = run_comparison(args.seeds, args.runs_dir)
    settings = ", ".join(
        f"{k} = {v}"
        for k, v in outcome["settings"].items()
        if k in ("num-server-rounds", "local-epochs", "qffl-q", "shards-per-client")
    )
    table = build_table(outcome["results"], settings)
    atomic_write_json(RESULTS_PATH, outcome)
    atomic_write_text(TABLE_PATH, table)
    print(table)
    return 1 if outcome["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

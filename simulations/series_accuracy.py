"""Accuracy study on the built-in sensor time series, with and without DP.

For ``basic-motions`` and ``pickup-gesture``: 4 clients, Dirichlet α = 0.5 over
the train split (partition seed 42), one federated run without DP and one with
sample-level DP at ε = 8 per client over the run, each through
:func:`simulations.simulate.simulate` (the real ServerApp and ClientApp on
Flower's simulation engine), ``model = "auto"`` (the 1-D CNN). Accuracy is on the
archive's test split, centrally. Each cell is one run: DP noise is drawn from OS
entropy, so a rerun differs.

Run: ``python -m simulations.series_accuracy`` (several minutes per cell on 2
shared cores). Writes ``benchmarks/results/series_accuracy.json`` and prints the
Markdown table the README quotes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simulations.study_cell import (
    cell_summary,
    epsilon_label,
    epsilon_slug,
    format_cell,
    run_cell,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS_PATH = ROOT / "benchmarks" / "results" / "series_accuracy.json"
DATASETS = ("basic-motions", "pickup-gesture")
EPSILONS = (math.inf, 8.0)
NUM_CLIENTS = 4
SETTINGS: dict[str, Any] = {
    "partitioning": "dirichlet",
    "dirichlet-alpha": 0.5,
    "num-server-rounds": 10,
    "local-epochs": 5,
    "batch-size": 8,
    "learning-rate": 0.05,
}


def cell_overrides(dataset: str, target_epsilon: float) -> dict[str, Any]:
    """Return the run config of one cell: ``inf`` means no DP."""
    dp = (
        {"dp-mode": "none"}
        if math.isinf(target_epsilon)
        else {"dp-mode": "sample", "target-epsilon": target_epsilon}
    )
    return {**SETTINGS, "dataset": dataset, **dp}


def run_study(output_dir: Path) -> dict[str, Any]:
    """Run every (dataset, ε) cell one after the other; a failed run is recorded."""
    cells = []
    for dataset in DATASETS:
        for epsilon in EPSILONS:
            cell = run_cell(
                cell_overrides(dataset, epsilon),
                num_clients=NUM_CLIENTS,
                output_dir=output_dir,
                name=f"{dataset}-{epsilon_slug(epsilon)}",
            )
            cell.update(
                dataset=dataset,
                target_epsilon=None if math.isinf(epsilon) else epsilon,
            )
            print(
                f"{dataset}, {epsilon_label(epsilon)}: {cell_summary(cell)}", flush=True
            )
            cells.append(cell)
    return {
        "name": "series_accuracy",
        "settings": SETTINGS,
        "runs-per-cell": 1,
        "cells": cells,
    }


def build_table(results: dict[str, Any]) -> str:
    """Return the Markdown table: one row per dataset, one column per privacy level."""
    header = "| dataset | " + " | ".join(epsilon_label(e) for e in EPSILONS) + " |"
    lines = [header, "|---|" + "---|" * len(EPSILONS)]
    for dataset in DATASETS:
        row = [c for c in results["cells"] if c["dataset"] == dataset]
        lines.append(f"| {dataset} | " + " | ".join(format_cell(c) for c in row) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Return the command line of the study (it takes no other input)."""
    parser = argparse.ArgumentParser(
        prog="python -m simulations.series_accuracy",
        description=(
            "Federated accuracy on the built-in sensor time series "
            f"({', '.join(DATASETS)}), {NUM_CLIENTS} clients, without DP and with "
            "DP at epsilon = 8; one run per cell, several minutes each."
        ),
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where the runs' folders go (default: runs/series-accuracy/<time>)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study, write the JSON results and print the table."""
    args = build_parser().parse_args(argv)
    output_dir = args.output_dir or (
        Path("runs") / "series-accuracy" / time.strftime("%Y%m%d-%H%M%S")
    )
    results = run_study(output_dir)
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n")
    print(build_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

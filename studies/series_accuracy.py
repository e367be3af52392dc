"""Accuracy study on the built-in sensor time series, with and without DP.

For ``basic-motions`` and ``pickup-gesture``: 4 clients, Dirichlet α = 0.5 over
the train split (partition seed 42, the same in every run), federated runs
without DP and with sample-level DP at ε = 8 per client over the run, each
through :func:`fedge.simulations.simulate.simulate` (the real ServerApp and ClientApp
on Flower's simulation engine). ``model = "auto"`` (the 1-D CNN) unless
``--model`` names another. Accuracy is on the archive's test split, centrally.

Each cell is run once per seed (``--seeds``, default 0 1 2); a seed sets the
model initialisation and the node sampling (``model-seed``, ``sampler-seed``).
DP noise is drawn from OS entropy in every run, so a rerun differs anyway. The
table gives each cell's mean, its range and the number of runs behind it.

Run: ``python -m fedge.studies.series_accuracy`` (a minute or more per run on 2
shared cores). Writes ``benchmarks/results/series_accuracy.json``
(``series_accuracy-<model>.json`` for another model) and prints the Markdown
table the README quotes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedge.simulations.engine import SimulationEngine, sharing
from fedge.studies.study_cell import (
    RESULTS_DIR,
    cell_summary,
    completed,
    epsilon_label,
    epsilon_slug,
    format_mean_range,
    run_cell,
)

DATASETS = ("basic-motions", "pickup-gesture")
MODELS = ("auto", "cnn1d", "gru")
EPSILONS = (math.inf, 8.0)
SEEDS = (0, 1, 2)
NUM_CLIENTS = 4
SETTINGS: dict[str, Any] = {
    "partitioning": "dirichlet",
    "dirichlet-alpha": 0.5,
    "num-server-rounds": 10,
    "local-epochs": 5,
    "batch-size": 8,
    "learning-rate": 0.05,
}


def cell_overrides(
    dataset: str, target_epsilon: float, *, model: str = "auto", seed: int = 0
) -> dict[str, Any]:
    """Return the run config of one run of a cell: ``inf`` means no DP."""
    dp = (
        {"dp-mode": "none"}
        if math.isinf(target_epsilon)
        else {"dp-mode": "sample", "target-epsilon": target_epsilon}
    )
    return {
        **SETTINGS,
        "dataset": dataset,
        "model": model,
        "model-seed": seed,
        "sampler-seed": seed,
        **dp,
    }


def results_path(model: str) -> Path:
    """Return where a study of ``model`` writes its JSON results."""
    suffix = "" if model == "auto" else f"-{model}"
    return RESULTS_DIR / f"series_accuracy{suffix}.json"


def run_study(
    output_dir: Path,
    *,
    seeds: Sequence[int] = SEEDS,
    datasets: Sequence[str] = DATASETS,
    model: str = "auto",
) -> dict[str, Any]:
    """Run every (dataset, ε) cell once per seed, one run after the other.

    A failed run is recorded with its error and the study goes on.
    """
    runs = []
    # One SuperLink and Ray cluster for every run, not one per run.
    with SimulationEngine() as engine, sharing(engine):
        for dataset, epsilon, seed in itertools.product(datasets, EPSILONS, seeds):
            name = f"{dataset}-{model}-{epsilon_slug(epsilon)}-seed{seed}"
            run = run_cell(
                cell_overrides(dataset, epsilon, model=model, seed=seed),
                num_clients=NUM_CLIENTS,
                output_dir=output_dir,
                name=name,
            )
            run.update(
                dataset=dataset,
                target_epsilon=None if math.isinf(epsilon) else epsilon,
                seed=seed,
            )
            print(f"{name}: {cell_summary(run)}", flush=True)
            runs.append(run)
    return {
        "name": "series_accuracy",
        "settings": SETTINGS,
        "num-clients": NUM_CLIENTS,
        "model": model,
        "seeds": list(seeds),
        "datasets": list(datasets),
        "runs": runs,
    }


def summarize_cell(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Return a cell's accuracy over its completed runs: each, mean, min, max, count.

    ``epsilon_max`` is the largest ε any client spent in any of the runs
    (``None`` without DP); ``failed`` counts the runs that did not complete.
    """
    done = [r for r in runs if completed(r)]
    accuracies = [float(r["accuracy"]) for r in done]
    epsilons = [r["epsilon"] for r in done if r.get("epsilon") is not None]
    return {
        "runs": len(done),
        "accuracies": accuracies,
        "failed": len(runs) - len(done),
        "mean": statistics.mean(accuracies) if accuracies else None,
        "min": min(accuracies, default=None),
        "max": max(accuracies, default=None),
        "epsilon_max": max(epsilons, default=None),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """``0.967 (0.900–1.000), 3 runs, ε ≤ 7.99``; ``failed (3 runs)`` if none finished."""
    if summary["runs"] == 0:
        return f"failed ({_runs(summary['failed'])})"
    text = format_mean_range(summary["accuracies"])
    text += f", {_runs(summary['runs'])}"
    if summary["failed"]:
        text += f" + {summary['failed']} failed"
    if summary["epsilon_max"] is not None:
        text += f", ε ≤ {summary['epsilon_max']:.2f}"
    return text


def _runs(count: int) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"


def build_table(results: dict[str, Any]) -> str:
    """Return the Markdown table: a row per dataset, a column per privacy level."""
    header = (
        "| dataset | model | " + " | ".join(epsilon_label(e) for e in EPSILONS) + " |"
    )
    lines = [header, "|---|---|" + "---|" * len(EPSILONS)]
    for dataset in results["datasets"]:
        cells = []
        for epsilon in EPSILONS:
            target = None if math.isinf(epsilon) else epsilon
            runs = [
                r
                for r in results["runs"]
                if r["dataset"] == dataset and r["target_epsilon"] == target
            ]
            cells.append(format_summary(summarize_cell(runs)))
        lines.append(f"| {dataset} | {results['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Return the command line of the study."""
    parser = argparse.ArgumentParser(
        prog="python -m fedge.studies.series_accuracy",
        description=(
            "Federated accuracy on the built-in sensor time series "
            f"({', '.join(DATASETS)}), {NUM_CLIENTS} clients, without DP and with "
            "DP at epsilon = 8; each cell run once per seed, a minute or more a run."
        ),
        allow_abbrev=False,
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(SEEDS),
        help="one run per cell and seed; a seed sets the model initialisation and "
        "the node sampling, not the partition or the DP noise "
        f"(default: {' '.join(map(str, SEEDS))})",
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=DATASETS,
        default=list(DATASETS),
        help=f"which sets to run (default: {' '.join(DATASETS)})",
    )
    parser.add_argument(
        "--model",
        choices=MODELS,
        default="auto",
        help="the model every run trains (default: auto, the 1-D CNN)",
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(set(args.seeds)) < len(args.seeds):
        parser.error(f"--seeds must differ (each names a run folder), got {args.seeds}")
    output_dir = args.output_dir or (
        Path("runs") / "series-accuracy" / time.strftime("%Y%m%d-%H%M%S")
    )
    results = run_study(
        output_dir, seeds=args.seeds, datasets=args.datasets, model=args.model
    )
    path = results_path(args.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(build_table(results))
    return 1 if any(not completed(r) for r in results["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())

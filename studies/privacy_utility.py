"""Privacy–utility study: final accuracy under DP-SGD, row by row of what fedge offers.

A grid of federated runs, each through :func:`fedge.simulations.simulate.simulate`
(the real ServerApp and ClientApp on Flower's simulation engine):

- **data sets** (:data:`DATASETS`): the digits over 3 and over 10 IID clients,
  ``basic-motions`` and ``pickup-gesture`` over 4 clients (Dirichlet α = 0.5 over
  the archive's train split, as :mod:`fedge.studies.series_accuracy` splits them);
- **rows** (:data:`ROWS`): one scenario file each in
  ``simulations/scenarios/privacy-utility/`` — the settings the defaults gave
  before the budget-aware DP rule (``old-settings``), the new defaults
  (``defaults``: only ``dp-mode = "sample"``), each technique on top of them
  (``ema``, ``augment``, ``fixed-features``) and all three together (``best``);
  plus the ``no-dp`` reference, run without DP only;
- **privacy levels** (:data:`EPSILONS`): each client's ε for the whole run;
- **seeds** (:data:`SEEDS`): a seed sets ``model-seed`` and ``sampler-seed``. DP
  noise is drawn from OS entropy in every run (a seeded noise would void the
  guarantee), so a rerun of a DP cell differs anyway.

One run is reproduced with the scenario file and the flags
:func:`reproduce_command` prints, e.g. ``fedge simulate --scenario
simulations/scenarios/privacy-utility/defaults.toml --dataset digits --clients
10 --target-epsilon 8 --set model-seed=0 --set sampler-seed=0``.

Each invocation adds its runs to the CSV (``--results``; a run of the same
data set, row, ε and seed replaces the earlier one), and the Markdown table is
built from every run in that CSV, so the grid can be run in chunks (one data
set or a few cells at a time) and the table shows what is done so far, with a
dash for a cell not yet run. A run that fails is counted in its cell, never
dropped.

Run: ``python -m fedge.studies.privacy_utility`` (the whole grid: 4 data sets ×
(6 rows × 3 ε + no DP) × 3 seeds = 228 runs at 15–55 s each on 2 shared
cores: 1–3 hours);
``--goals`` runs only the cells the goals are stated for.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from fedge.shared.atomic_io import atomic_write_text
from fedge.shared.errors import ConfigError, FedgeError
from fedge.simulations.engine import SimulationEngine, sharing
from fedge.simulations.scenario_file import load_scenario
from fedge.simulations.simulate import simulate
from fedge.studies.privacy_utility_grid import (
    CSV_COLUMNS,
    DATASETS,
    EPSILONS,
    GOALS,
    NO_DP_ROW,
    QUICK_SETTINGS,
    ROWS,
    SEEDS,
    StudyRun,
    row_scenario,
)
from fedge.studies.privacy_utility_table import build_table, merge_runs
from fedge.studies.study_cell import (
    RESULTS_DIR,
    ROOT,
    TABLES_DIR,
    cell_summary,
    run_cell,
)

RESULTS_PATH = RESULTS_DIR / "privacy_utility.csv"
TABLE_PATH = TABLES_DIR / "privacy_utility.md"
RUNS_DIR = Path("runs") / "privacy-utility"


def plan_runs(
    *,
    datasets: Sequence[str] = tuple(DATASETS),
    rows: Sequence[str] = ROWS,
    epsilons: Sequence[float] = EPSILONS,
    seeds: Sequence[int] = SEEDS,
    goals_only: bool = False,
) -> list[StudyRun]:
    """Expand the grid, data set by data set: every DP row at every ε, then no DP.

    The ``no-dp`` row runs once per seed (ε = ∞), whatever ``epsilons``.
    ``goals_only`` keeps the DP runs of the (data set, ε) cells in
    :data:`GOALS` (and the ``no-dp`` runs), ordered by data set as the rest.
    """
    runs = []
    for dataset in datasets:
        for row in rows:
            levels = (math.inf,) if row == NO_DP_ROW else epsilons
            for epsilon, seed in itertools.product(levels, seeds):
                if goals_only and row != NO_DP_ROW and (dataset, epsilon) not in GOALS:
                    continue
                runs.append(StudyRun(dataset, row, epsilon, seed))
    return runs


def run_overrides(run: StudyRun, *, quick: bool = False) -> dict[str, Any]:
    """Return one run's config: its row's scenario, its data set, ε and seed.

    Raises
    ------
    ConfigError
        If a DP row is asked for without a finite ε > 0, or ``no-dp`` with one.
    """
    settings = load_scenario(row_scenario(run.row))
    dp = settings.get("dp-mode") == "sample"
    if dp and not (run.target_epsilon > 0 and math.isfinite(run.target_epsilon)):
        raise ConfigError(
            f"Row {run.row!r} trains with DP-SGD: its ε must be a number > 0, "
            f"got {run.target_epsilon}."
        )
    if not dp and not math.isinf(run.target_epsilon):
        raise ConfigError(
            f"Row {run.row!r} trains without DP: its ε must be inf, "
            f"got {run.target_epsilon}."
        )
    overrides = {
        **settings,
        **DATASETS[run.dataset].overrides(),
        "model-seed": run.seed,
        "sampler-seed": run.seed,
    }
    if dp:
        overrides["target-epsilon"] = float(run.target_epsilon)
    return {**overrides, **(QUICK_SETTINGS if quick else {})}


def parse_epsilon(text: str) -> float:
    """Return a privacy level from the command line: a number > 0.

    Raises
    ------
    ConfigError
        If ``text`` is not a finite number > 0.
    """
    try:
        value = float(text.strip())
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(
            f"ε must be a number > 0 (the no-dp row is the no-DP reference); "
            f"got {text!r}."
        )
    return value


def run_study(
    runs: Iterable[StudyRun],
    *,
    output_dir: Path = RUNS_DIR,
    study_name: str = "",
    quick: bool = False,
    simulate_fn: Callable[..., Path] = simulate,
    echo: Callable[[str], None] = print,
    on_run: Callable[[dict[str, Any]], None] = lambda _record: None,
) -> list[dict[str, Any]]:
    """Run ``runs`` one after the other through one warm engine; return their records.

    A run that fails is recorded as failed (``state = "failed"``, its error)
    and the study goes on. ``on_run`` gets each record as soon as its run
    ends (the CLI saves it, so an interrupted chunk keeps what it finished).

    Raises
    ------
    FedgeError
        If the study's folder (``output_dir / study_name``) already exists:
        its run folders would be refused.
    """
    study_dir = output_dir / (study_name or time.strftime("%Y%m%d-%H%M%S"))
    if study_dir.exists():
        raise FedgeError(
            f"Study folder {study_dir} already exists; its runs would be refused. "
            "Choose another study name or remove the folder."
        )
    records = []
    # One SuperLink and Ray cluster for every run, not one per run.
    with SimulationEngine() as engine, sharing(engine):
        for run in runs:
            echo(f"privacy-utility: {run.name} ...")
            cell = run_cell(
                run_overrides(run, quick=quick),
                num_clients=DATASETS[run.dataset].clients,
                output_dir=study_dir,
                name=run.name,
                simulate_fn=simulate_fn,
            )
            echo(f"privacy-utility: {run.name}: {cell_summary(cell)}")
            record = {
                "dataset": run.dataset,
                "row": run.row,
                "target_epsilon": run.target_epsilon,
                "seed": run.seed,
                **{k: cell.get(k) for k in CSV_COLUMNS[4:]},
            }
            on_run(record)
            records.append(record)
    return records


def _epsilon_argument(text: str) -> float:
    try:
        return parse_epsilon(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m fedge.studies.privacy_utility``."""
    parser = argparse.ArgumentParser(
        prog="python -m fedge.studies.privacy_utility",
        description=(
            "Final central accuracy under DP-SGD: the old settings, the DP "
            "defaults, each technique (EMA, augmentation multiplicity, fixed "
            "features) and all three, at each client ε, plus the no-DP "
            "reference; 3 seeds a cell. Each run is added to the CSV "
            f"(default {RESULTS_PATH.relative_to(ROOT)}; same data set, row, ε "
            "and seed replaces) and the Markdown table is built from the whole "
            f"CSV (default {TABLE_PATH.relative_to(ROOT)}), so the grid can be "
            "run in chunks."
        ),
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=list(DATASETS),
        default=list(DATASETS),
        help=f"(default: {' '.join(DATASETS)})",
    )
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=list(ROWS),
        default=list(ROWS),
        help=f"scenario files in simulations/scenarios/privacy-utility/ (default: {' '.join(ROWS)})",
    )
    parser.add_argument(
        "--epsilons",
        type=_epsilon_argument,
        nargs="+",
        default=list(EPSILONS),
        help="each client's ε for the DP rows (default: 1 3 8); no-dp runs once",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(SEEDS),
        help="model-seed and sampler-seed of each run (default: 0 1 2)",
    )
    parser.add_argument(
        "--goals",
        action="store_true",
        help="only the DP cells the goals are stated for (digits-10, basic-motions, "
        "pickup-gesture at ε = 8; digits-3 at ε = 3) and no-dp",
    )
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="run nothing: rebuild the Markdown table from the CSV",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 rounds a run: checks the study runs; writes *-quick files "
        "unless --results / --table are given",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=RUNS_DIR,
        help=f"parent of this invocation's folder of runs (default: {RUNS_DIR})",
    )
    parser.add_argument(
        "--results", type=Path, default=None, help="CSV of every run (merged)"
    )
    parser.add_argument("--table", type=Path, default=None, help="Markdown table")
    return parser


def output_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """Return the CSV and Markdown paths: given, else the study's (``-quick`` ones)."""
    suffix = "-quick" if args.quick else ""
    results = args.results or RESULTS_PATH.with_name(f"privacy_utility{suffix}.csv")
    table = args.table or TABLE_PATH.with_name(f"privacy_utility{suffix}.md")
    return results, table


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen runs, merge them into the CSV, write the table; 1 if any failed."""
    import torch

    torch.set_num_threads(1)  # the study's own process; clients set theirs
    args = build_parser().parse_args(argv)
    results_path, table_path = output_paths(args)
    runs = plan_runs(
        datasets=args.datasets,
        rows=args.rows,
        epsilons=args.epsilons,
        seeds=args.seeds,
        goals_only=args.goals,
    )
    records = (
        []
        if args.table_only
        else run_study(
            runs,
            output_dir=args.output_dir,
            quick=args.quick,
            on_run=lambda record: merge_runs(results_path, [record]),
        )
    )
    frame = merge_runs(results_path, [])
    table = build_table(frame, quick=args.quick)
    atomic_write_text(table_path, table)
    print()
    print(table)
    print(f"written: {results_path}, {table_path}")
    failed = [r for r in records if r.get("state") != "complete"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

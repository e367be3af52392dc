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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fedge.shared.atomic_io import atomic_write_text
from fedge.shared.errors import ConfigError, FedgeError
from fedge.simulations.engine import SimulationEngine, sharing
from fedge.simulations.scenario_file import SCENARIOS_DIR, load_scenario
from fedge.simulations.simulate import simulate
from fedge.studies.series_accuracy import format_summary, summarize_cell
from fedge.studies.study_cell import (
    RESULTS_DIR,
    ROOT,
    TABLES_DIR,
    cell_summary,
    epsilon_label,
    epsilon_slug,
    run_cell,
)

RESULTS_PATH = RESULTS_DIR / "privacy_utility.csv"
TABLE_PATH = TABLES_DIR / "privacy_utility.md"
RUNS_DIR = Path("runs") / "privacy-utility"
ROW_SCENARIOS_DIR = SCENARIOS_DIR / "privacy-utility"


@dataclass(frozen=True)
class StudyDataset:
    """One column group of the study: a data set split over a number of clients."""

    name: str
    dataset: str
    clients: int
    partitioning: str = "iid"
    dirichlet_alpha: float = 0.5

    def overrides(self) -> dict[str, Any]:
        """Return the run-config keys that select and split this data set."""
        keys: dict[str, Any] = {
            "dataset": self.dataset,
            "partitioning": self.partitioning,
        }
        if self.partitioning == "dirichlet":
            keys["dirichlet-alpha"] = self.dirichlet_alpha
        return keys

    def flags(self) -> str:
        """Return the same as ``fedge simulate`` flags."""
        text = f"--dataset {self.dataset} --clients {self.clients}"
        if self.partitioning != "iid":
            text += f" --partitioning {self.partitioning}"
        if self.partitioning == "dirichlet":
            text += f" --alpha {self.dirichlet_alpha:g}"
        return text


DATASETS = {
    d.name: d
    for d in (
        StudyDataset("digits-3", "digits", 3),
        StudyDataset("digits-10", "digits", 10),
        StudyDataset("basic-motions", "basic-motions", 4, "dirichlet"),
        StudyDataset("pickup-gesture", "pickup-gesture", 4, "dirichlet"),
    )
}
# Rows trained with DP, in the table's order; each is ROW_SCENARIOS_DIR/<row>.toml.
DP_ROWS = ("old-settings", "defaults", "ema", "augment", "fixed-features", "best")
NO_DP_ROW = "no-dp"
ROWS = (*DP_ROWS, NO_DP_ROW)
ROW_LABELS = {
    "old-settings": "old settings (relu, batch 32, 5 epochs, lr 0.05)",
    "defaults": "defaults (only dp-mode = sample)",
    "ema": "defaults + EMA 0.9",
    "augment": "defaults + augmentation K = 4",
    "fixed-features": "defaults + fixed features (random-conv-linear)",
    "best": "all three",
    "no-dp": "no DP (defaults)",
}
EPSILONS = (1.0, 3.0, 8.0)
SEEDS = (0, 1, 2)
# The goals: (data set, ε) -> mean accuracy over 3 seeds to reach.
GOALS = {
    ("digits-10", 8.0): 0.94,
    ("basic-motions", 8.0): 0.80,
    ("pickup-gesture", 8.0): 0.30,
    ("digits-3", 3.0): 0.92,
}
# --quick: every run, but short enough only to prove the study works.
QUICK_SETTINGS = {"num-server-rounds": 2}
CSV_COLUMNS = (
    "dataset",
    "row",
    "target_epsilon",
    "seed",
    "state",
    "accuracy",
    "epsilon",
    "noise_multiplier",
    "examples_per_client",
    "wall_time_s",
    "run_dir",
    "error",
)
KEY_COLUMNS = ["dataset", "row", "target_epsilon", "seed"]


@dataclass(frozen=True)
class StudyRun:
    """One run of the grid."""

    dataset: str
    row: str
    target_epsilon: float  # inf: no DP
    seed: int

    @property
    def name(self) -> str:
        """The run folder: ``digits-10-defaults-eps8-seed0``."""
        return (
            f"{self.dataset}-{self.row}-{epsilon_slug(self.target_epsilon)}"
            f"-seed{self.seed}"
        )


def row_scenario(row: str) -> Path:
    """Return the scenario file of a row.

    Raises
    ------
    FedgeError
        If ``row`` is not one of :data:`ROWS`.
    """
    if row not in ROWS:
        raise FedgeError(
            f"Unknown study row {row!r}: the rows are {', '.join(ROWS)} "
            f"(scenario files in {ROW_SCENARIOS_DIR})."
        )
    return ROW_SCENARIOS_DIR / f"{row}.toml"


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


def reproduce_command(row: str, dataset: str, epsilon: float, seed: int = 0) -> str:
    """Return the ``fedge simulate`` command that reruns one run of the grid."""
    path = row_scenario(row).relative_to(ROOT)
    text = f"fedge simulate --scenario {path} {DATASETS[dataset].flags()}"
    if not math.isinf(epsilon):
        text += f" --target-epsilon {epsilon:g}"
    return text + f" --set model-seed={seed} --set sampler-seed={seed}"


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


def merge_runs(path: Path, records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Return the CSV at ``path`` (if any) with ``records`` added, and write it.

    A record replaces an earlier run of the same data set, row, ε and seed.
    """
    new = pd.DataFrame(list(records), columns=list(CSV_COLUMNS))
    if path.is_file():
        old = pd.read_csv(path)
        frame = pd.concat([old, new], ignore_index=True) if len(new) else old
    else:
        frame = new
    frame = frame.drop_duplicates(subset=KEY_COLUMNS, keep="last")
    atomic_write_text(path, frame.to_csv(index=False))
    return frame


def _cell_runs(
    frame: pd.DataFrame, dataset: str, row: str, epsilon: float
) -> list[dict[str, Any]]:
    mask = (
        (frame["dataset"] == dataset)
        & (frame["row"] == row)
        & (frame["target_epsilon"].astype(float) == epsilon)
    )
    return [
        {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in r.items()
        }
        for r in frame[mask].to_dict("records")
    ]


def summarize(
    frame: pd.DataFrame, dataset: str, row: str, epsilon: float
) -> dict[str, Any]:
    """Return a cell's summary (:func:`series_accuracy.summarize_cell`) from the CSV."""
    return summarize_cell(_cell_runs(frame, dataset, row, epsilon))


def format_table_cell(summary: dict[str, Any]) -> str:
    """``0.901 (0.880–0.920)``, ``… + 1 failed``, ``failed (2 runs)`` or ``—``."""
    if summary["runs"] == 0 and summary["failed"] == 0:
        return "—"
    text = format_summary(summary)
    # The ε ≤ … of series_accuracy's cell is the same in every DP cell here
    # (the budget), and the run count is in the table's note unless short.
    text = text.split(", ε ≤")[0]
    return text.replace(", 3 runs", "")


def goal_status(frame: pd.DataFrame) -> list[str]:
    """One line per goal: met or missed by how much, for the defaults and all three.

    When another DP row has the highest mean of the cell's full-seed rows, the
    line names it too: a report of what the study measured, not a choice of
    settings (picking a row by its test accuracy would be tuning on the
    evaluation data).
    """
    lines = []
    for (dataset, epsilon), goal in GOALS.items():
        parts = [
            _goal_verdict(row, summarize(frame, dataset, row, epsilon), goal)
            for row in ("defaults", "best")
        ]
        highest = _highest_full_row(frame, dataset, epsilon)
        if highest not in (None, "defaults", "best"):
            summary = summarize(frame, dataset, str(highest), epsilon)
            parts.append("highest: " + _goal_verdict(str(highest), summary, goal))
        lines.append(
            f"- {dataset} at ε = {epsilon:g}, goal ≥ {goal:.2f}: " + "; ".join(parts)
        )
    return lines


def _goal_verdict(row: str, summary: dict[str, Any], goal: float) -> str:
    """``defaults (…) 0.828 over 3 run(s), missed by 0.112`` or ``…: not run``."""
    if summary["mean"] is None:
        return f"{ROW_LABELS[row]}: not run"
    mean = summary["mean"]
    verdict = "met" if mean >= goal else f"missed by {goal - mean:.3f}"
    if summary["runs"] < len(SEEDS):  # a goal is a mean of 3 seeds
        verdict += f" so far (not decided: {summary['runs']} of {len(SEEDS)} seeds)"
    return f"{ROW_LABELS[row]} {mean:.3f} over {summary['runs']} run(s), {verdict}"


def _highest_full_row(frame: pd.DataFrame, dataset: str, epsilon: float) -> str | None:
    """Return the DP row with the highest mean among those run at every seed, if any."""
    means = {
        row: s["mean"]
        for row in DP_ROWS
        if (s := summarize(frame, dataset, row, epsilon))["runs"] >= len(SEEDS)
    }
    return max(means, key=lambda row: means[row]) if means else None


def goal_table(frame: pd.DataFrame) -> list[str]:
    """Return the Markdown table of the goal cells: a row per study row, a column per goal."""
    header = [f"{d} ({DATASETS[d].clients} clients), ε = {e:g}" for d, e in GOALS]
    lines = [
        "| row | " + " | ".join(header) + " |",
        "|---|" + "---:|" * len(GOALS),
        "| goal | " + " | ".join(f"≥ {g:.2f}" for g in GOALS.values()) + " |",
    ]
    for row in ROWS:
        cells = [
            format_table_cell(
                summarize(frame, d, row, math.inf if row == NO_DP_ROW else e)
            )
            for d, e in GOALS
        ]
        lines.append(f"| {ROW_LABELS[row]} | " + " | ".join(cells) + " |")
    return lines


def build_table(frame: pd.DataFrame, *, quick: bool = False) -> str:
    """Return the Markdown page: one table per data set, the goals, how to rerun."""
    lines = [
        "# Privacy–utility study",
        "",
        "Final central accuracy, mean (range) over seeds 0, 1, 2 (a seed sets "
        "`model-seed` and `sampler-seed`; DP noise is fresh in every run). ε is "
        "each client's budget for the whole run (δ ≤ 1/(10 n)). A cell with "
        "fewer runs says how many; a failed run is counted, never dropped; — = "
        "not run yet. Digits: 450 held-out test digits, IID clients. Series: "
        "the archive's test split, 4 clients, Dirichlet α = 0.5 over its train "
        "split. Produced by `python -m fedge.studies.privacy_utility`.",
        "",
    ]
    if quick:
        lines += ["**Quick run**: 2 rounds; a smoke test, not the study's figures.", ""]
    for name, data in DATASETS.items():
        if not (frame["dataset"] == name).any():
            continue
        lines += [
            f"## {name} ({data.clients} clients)",
            "",
            "| row | " + " | ".join(epsilon_label(e) for e in EPSILONS) + " |",
            "|---|" + "---:|" * len(EPSILONS),
        ]
        for row in DP_ROWS:
            cells = [
                format_table_cell(summarize(frame, name, row, e)) for e in EPSILONS
            ]
            lines.append(f"| {ROW_LABELS[row]} | " + " | ".join(cells) + " |")
        reference = format_table_cell(summarize(frame, name, NO_DP_ROW, math.inf))
        lines.append(
            f"| {ROW_LABELS[NO_DP_ROW]} | {reference} | {reference} | {reference} |"
        )
        goal_epsilon = next((e for d, e in GOALS if d == name), EPSILONS[-1])
        lines += [
            "",
            f"Rerun a cell: `{reproduce_command('defaults', name, goal_epsilon)}`.",
            "",
        ]
    lines += [
        "## Goals (mean of 3 seeds)",
        "",
        *goal_table(frame),
        "",
        *goal_status(frame),
        "",
    ]
    lines += [
        "Rows and their scenario files (`simulations/scenarios/privacy-utility/`):",
        "",
        *(f"- {ROW_LABELS[r]}: `{r}.toml`" for r in ROWS),
        "",
    ]
    return "\n".join(lines)


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

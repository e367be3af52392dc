"""The privacy–utility study's results: the CSV of runs, the Markdown tables, the goals.

Built from every run in the CSV, so the grid can be run in chunks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fedge.shared.atomic_io import atomic_write_text
from fedge.studies.privacy_utility_grid import (
    CSV_COLUMNS,
    DATASETS,
    DP_ROWS,
    EPSILONS,
    GOALS,
    KEY_COLUMNS,
    NO_DP_ROW,
    ROW_LABELS,
    ROWS,
    SEEDS,
    reproduce_command,
)
from fedge.studies.series_accuracy import format_summary, summarize_cell
from fedge.studies.study_cell import (
    epsilon_label,
)


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

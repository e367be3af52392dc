"""``fedge report RUN_DIR [RUN_DIR ...]``: a run's report, or several runs compared."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fedge report``."""
    p = subparsers.add_parser(
        "report",
        help="write plots and report.md for a run folder, or compare runs",
        description=(
            "With one RUN_DIR: read its metrics.csv (and config.json, status.json, "
            "model.json, metrics.jsonl when present) and write RUN_DIR/plots/*.png "
            "and RUN_DIR/report.md (`fedge simulate` already does this at the end "
            "of a run). With several: overlay their central accuracy, worst-client "
            "accuracy and ε per round in OUT_DIR/comparison.png and "
            "OUT_DIR/comparison.csv, and print the table."
        ),
    )
    p.add_argument(
        "run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="run folders"
    )
    p.add_argument(
        "--out-dir",
        type=Path,
        default=Path("."),
        help="where a comparison of several runs is written (default: .)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """CLI entry: write the report (one run) or the comparison (several)."""
    from fedge.shared.run_folder import PLOTS_DIR

    if len(args.run_dirs) == 1:
        from fedge.reports.run_report import write_report

        path = write_report(args.run_dirs[0])
        print(f"report: {path}")
        print(f"plots:  {path.parent / PLOTS_DIR}")
        return 0
    from fedge.reports.run_comparison import compare_runs, write_comparison

    table = compare_runs(args.run_dirs)
    png, csv = write_comparison(table, args.out_dir)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"figure: {png}")
    print(f"table:  {csv}")
    return 0

"""``fedge report RUN_DIR``: (re)write a run folder's plots and report.md."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fedge report``."""
    p = subparsers.add_parser(
        "report",
        help="write plots and report.md for a run folder",
        description=(
            "Read RUN_DIR/metrics.csv (and config.json, status.json, model.json, "
            "metrics.jsonl when present) and write RUN_DIR/plots/*.png and "
            "RUN_DIR/report.md. `fedge simulate` already does this at the end of a run."
        ),
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """CLI entry: write the report and print where it is."""
    from shared.run_folder import PLOTS_DIR
    from simulations.report import write_report

    path = write_report(args.run_dir)
    print(f"report: {path}")
    print(f"plots:  {path.parent / PLOTS_DIR}")
    return 0

"""``fedge status RUN_DIR [--watch]``: a run's progress, read from its folder alone.

Works while the run is live (and from any machine that sees the folder); the
figures come from :func:`fedge.reports.run_progress.read_progress`. Exit code: 0
for a running or complete run, 1 for a failed or stalled one, 2 for a folder
that is not a run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fedge.reports.run_progress import RunProgress, read_progress

DEFAULT_INTERVAL_S = 5.0
# The rounds shown in text; --format json has them all.
SHOWN_ROUNDS = 10


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fedge status``."""
    p = subparsers.add_parser(
        "status",
        help="progress of a run folder, live or finished",
        description=(
            "Show a run's progress from its folder: rounds done of planned, last "
            "central accuracy, ε (maximum and each node's), nodes sampled / "
            "replied / failed / dropped / refused and wall time per round, the "
            "ETA, and for a failed run the command that resumes it. Reads only "
            "the folder, so it works while the run is live. A run still marked "
            "running whose coordinator has written nothing for longer than it "
            "ever waits is reported stalled, with the resume command. Exit 0 "
            "running or complete, 1 failed or stalled."
        ),
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder")
    p.add_argument(
        "--watch",
        action="store_true",
        help="refresh until the run is no longer running",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL_S,
        metavar="S",
        help=f"seconds between refreshes with --watch (default: {DEFAULT_INTERVAL_S:g})",
    )
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="output format; with --watch, json prints one object per line "
        "(default: text)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the progress once, or until the run stops with ``--watch``."""
    while True:
        progress = read_progress(args.run_dir)
        if args.format == "json":
            print(json.dumps(progress.to_dict(), sort_keys=True), flush=True)
        else:
            if args.watch and sys.stdout.isatty():
                print("\033[H\033[J", end="")  # clear the screen: one live view
            print(format_progress(progress), flush=True)
        ended = progress.state != "running" or progress.stalled
        if not args.watch or ended:
            return 1 if progress.state == "failed" or progress.stalled else 0
        time.sleep(args.interval)


def format_progress(progress: RunProgress) -> str:
    """Return the text view: a headline, ε per node, a table of rounds, ETA, resume."""
    planned = "?" if progress.planned_rounds is None else progress.planned_rounds
    head = f"{progress.run_dir}: {progress.state}, round {progress.rounds_done} of {planned}"
    if progress.last_accuracy is not None:
        head += f", accuracy {progress.last_accuracy:.4f}"
    if progress.epsilon_max is not None:
        head += f", ε max {progress.epsilon_max:.3g}"
    lines = [head]
    if progress.message:
        lines.append(f"  {progress.message}")
    if progress.epsilon_per_node:
        lines.append(
            "  ε per node: "
            + ", ".join(f"{n} {e:.3g}" for n, e in progress.epsilon_per_node.items())
        )
    if progress.rounds:
        lines.append(
            "  round  sampled  replied  failed  dropped  refused  accuracy   ε max  time s"
        )
        if len(progress.rounds) > SHOWN_ROUNDS:
            lines.append(f"  ({len(progress.rounds) - SHOWN_ROUNDS} earlier rounds)")
        for r in progress.rounds[-SHOWN_ROUNDS:]:
            lines.append(
                f"  {r.round:>5}  {_cell(r.sampled):>7}  {_cell(r.replies):>7}  "
                f"{_cell(r.failures):>6}  {_cell(r.dropped):>7}  {_cell(r.refused):>7}  "
                f"{_cell(r.accuracy, '.4f'):>8}  {_cell(r.epsilon_max, '.3g'):>6}  "
                f"{_cell(r.round_time_s, '.1f'):>6}"
            )
    if progress.mean_round_time_s is not None:
        timing = f"  {progress.mean_round_time_s:.1f} s per round (recent mean)"
        if progress.eta_s is not None:
            timing += f"; about {_duration(progress.eta_s)} left"
        lines.append(timing)
    if progress.stalled and progress.silent_s is not None:
        lines.append(
            f"  stalled: nothing written for {_duration(progress.silent_s)}, longer "
            "than the coordinator ever waits; it was stopped or lost"
        )
    if progress.resume_command:
        lines.append(f"  resume: {progress.resume_command}")
    return "\n".join(lines)


def _cell(value: float | None, spec: str = "d") -> str:
    return "-" if value is None else format(value, spec)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"

"""The table of docs/own-model.md from the examples' run folders: mean (range) over the seeds.

Run folders are named ``<row>-s<seed>`` (``finetune-s0``, ``scratch-s1``,
``nodp-s2``, as the commands of docs/own-model.md name them); each row's final central
accuracy and largest client ε are summarised over its seeds, and the bytes per
client per round after each node's first round (``metrics.csv``) are divided
by the raw bytes of the trainable parameters.

Run: ``python examples/figures.py RUNS_DIR``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd

from fedge.edge_export.run_inputs import load_run_inputs
from fedge.shared import run_folder
from fedge.shared.trainable import select_trainable, trainable_size_bytes
from fedge.studies.study_cell import completed, format_mean_range, read_cell

RUN_NAME = re.compile(r"^(?P<row>.+)-s(?P<seed>\d+)$")


def bytes_ratio(run_dir: Path) -> float:
    """Largest bytes per client per round after round 1 ÷ trainable bytes.

    Both directions: what the coordinator sent each sampled node and what
    each node replied.
    """
    run = load_run_inputs(run_dir)
    selection = select_trainable(run.model, run.config.train.trainable)
    trainable_bytes = trainable_size_bytes(run.model, selection)
    rounds = pd.read_csv(run_dir / run_folder.METRICS_CSV_FILE)
    later = rounds[rounds[run_folder.ROUND] > 1]
    sent = later[run_folder.BYTES_SENT] / later[run_folder.SAMPLED]
    received = later[run_folder.BYTES_RECEIVED] / later[run_folder.REPLIES]
    return float(max(sent.max(), received.max())) / trainable_bytes


def table(runs_dir: Path) -> str:
    """Return the Markdown table of every ``<row>-s<seed>`` run under ``runs_dir``."""
    rows: dict[str, list[Path]] = defaultdict(list)
    for run_dir in sorted(runs_dir.iterdir()):
        match = RUN_NAME.match(run_dir.name)
        if match and completed(read_cell(run_dir)):
            rows[match["row"]].append(run_dir)
    lines = [
        "| run | seeds | accuracy | largest client ε | bytes/client/round ÷ trainable |",
        "|---|---:|---:|---:|---:|",
    ]
    for row, run_dirs in rows.items():
        cells = [read_cell(d) for d in run_dirs]
        epsilons = [c["epsilon"] for c in cells if c["epsilon"] is not None]
        accuracy = format_mean_range([c["accuracy"] for c in cells])
        epsilon = f"{max(epsilons):.2f}" if epsilons else "no DP"
        ratio = max(bytes_ratio(d) for d in run_dirs)
        lines.append(f"| {row} | {len(cells)} | {accuracy} | {epsilon} | {ratio:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the table for the run folders under RUNS_DIR."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", type=Path, metavar="RUNS_DIR")
    print(table(parser.parse_args(argv).runs_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())

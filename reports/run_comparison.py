"""Several runs side by side: accuracy, worst-client accuracy and ε per round.

``fedge report RUN_DIR RUN_DIR ...`` reads each folder's ``metrics.csv`` and
overlays the runs (FedAvg against q-FedAvg, ε = 3 against ε = 8, ...) in one
figure and one table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fedge.reports.run_report import read_run_record
from fedge.shared.atomic_io import atomic_write_text
from fedge.shared.errors import FedgeError
from fedge.shared.run_folder import (
    CENTRAL_ACCURACY,
    CLIENT_ACCURACY_WORST,
    EPSILON_MAX,
    ROUND,
)

RUN = "run"
COMPARED_COLUMNS = (CENTRAL_ACCURACY, CLIENT_ACCURACY_WORST, EPSILON_MAX)
PANEL_TITLES = {
    CENTRAL_ACCURACY: "central accuracy",
    CLIENT_ACCURACY_WORST: "worst client's accuracy",
    EPSILON_MAX: "ε (largest over clients)",
}
COMPARISON_PNG = "comparison.png"
COMPARISON_CSV = "comparison.csv"


def compare_runs(run_dirs: Sequence[Path]) -> pd.DataFrame:
    """Return one row per run and round with the compared columns.

    Runs are named by their folder; folders of the same name are told apart by
    their parent. A column a run lacks (no DP, no per-client evaluation that
    round) is empty.

    Raises
    ------
    FedgeError
        With fewer than two folders, the same folder twice, or a folder without
        a usable ``metrics.csv``.
    """
    if len(run_dirs) < 2:
        raise FedgeError(
            f"comparing runs needs at least two run folders, got {len(run_dirs)}"
        )
    resolved = [Path(d).resolve() for d in run_dirs]
    if len(set(resolved)) != len(resolved):
        raise FedgeError("the same run folder is named twice; name each run once")
    names = [d.name for d in resolved]
    if len(set(names)) != len(names):
        names = [f"{d.parent.name}/{d.name}" for d in resolved]
    frames = []
    for name, run_dir in zip(names, run_dirs, strict=True):
        metrics = read_run_record(Path(run_dir)).metrics
        frame = metrics.reindex(columns=[ROUND, *COMPARED_COLUMNS])
        frame.insert(0, RUN, name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def write_comparison(table: pd.DataFrame, out_dir: Path) -> tuple[Path, Path]:
    """Write ``comparison.png`` (one panel per compared column) and ``comparison.csv``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out_dir / COMPARISON_CSV, out_dir / COMPARISON_PNG
    atomic_write_text(csv_path, table.to_csv(index=False))
    panels = [c for c in COMPARED_COLUMNS if table[c].notna().any()]
    fig = Figure(figsize=(4.2 * len(panels), 3.8), dpi=110)
    FigureCanvasAgg(fig)
    for i, column in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for name, rows in table.groupby(RUN, sort=False):
            shown = rows[[ROUND, column]].dropna()
            ax.plot(shown[ROUND], shown[column], marker="o", label=str(name))
        ax.set(title=PANEL_TITLES[column], xlabel=ROUND)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(png_path)
    return png_path, csv_path

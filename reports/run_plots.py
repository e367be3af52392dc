"""The run's plots (``plots/*.png``): accuracy, loss, per-client accuracy, ε, clients.

Each plot is drawn only when a column it shows holds a value, so runs from
before a feature existed still get the plots they can.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from fedge.reports.canvas import agg_figure
from fedge.shared.run_folder import (
    CENTRAL_ACCURACY,
    CENTRAL_LOSS,
    CLIENT_ACCURACY_MEAN,
    CLIENT_ACCURACY_P10,
    CLIENT_ACCURACY_WORST,
    DROPPED,
    EPSILON_MAX,
    EPSILON_MEAN,
    FAILURES,
    FED_EVAL_ACCURACY,
    FED_EVAL_LOSS,
    REFUSED,
    REPLIES,
    ROUND,
    SAMPLED,
    TRAIN_LOSS,
)

if TYPE_CHECKING:
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure

PARTICIPATION_COLUMNS = (SAMPLED, REPLIES, FAILURES, DROPPED, REFUSED)
PARTICIPATION_LABELS = {
    SAMPLED: SAMPLED,
    REPLIES: "replied",
    FAILURES: "failed / no reply",
    DROPPED: "dropped (invalid update)",
    REFUSED: "refused (privacy budget)",
}


def write_plots(metrics: pd.DataFrame, plots_dir: Path) -> list[Path]:
    """Write each plot whose columns ``metrics`` has; return the files written."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in plot_figures(metrics).items():
        fig.savefig(plots_dir / name)
        written.append(plots_dir / name)
    return written


def plot_figures(metrics: pd.DataFrame) -> dict[str, Figure]:
    """Return each plot whose columns ``metrics`` has, by its file name in ``plots/``.

    Parameters
    ----------
    metrics : pandas.DataFrame
        ``metrics.csv`` as read (one row per round).

    Returns
    -------
    dict of str to matplotlib.figure.Figure
        ``accuracy.png``, ``loss.png``, ``client-accuracy.png``,
        ``epsilon.png`` and ``participation.png``, each only when a column it
        shows holds a value. Figures of matplotlib's object API on the Agg
        canvas: no pyplot state, shown by a notebook as any figure is.
    """
    figures = {}
    specs = [
        (
            "accuracy.png",
            "Accuracy per round",
            "accuracy",
            {
                CENTRAL_ACCURACY: "central (server test set)",
                FED_EVAL_ACCURACY: "federated (clients' test splits)",
            },
        ),
        (
            "loss.png",
            "Loss per round",
            "cross-entropy loss",
            {
                CENTRAL_LOSS: "central (server test set)",
                TRAIN_LOSS: "clients' training loss (mean)",
                FED_EVAL_LOSS: "federated (clients' test splits)",
            },
        ),
        (
            "client-accuracy.png",
            "Accuracy on each client's own test split",
            "accuracy",
            {
                CLIENT_ACCURACY_MEAN: "mean over clients",
                CLIENT_ACCURACY_P10: "10th percentile",
                CLIENT_ACCURACY_WORST: "worst client",
            },
        ),
        (
            "epsilon.png",
            "Privacy spent per round",
            "ε (cumulative)",
            {EPSILON_MAX: "largest client ε", EPSILON_MEAN: "mean client ε"},
        ),
    ]
    for name, title, ylabel, series in specs:
        present = {c: label for c, label in series.items() if has_values(metrics, c)}
        if present:
            figures[name] = _line_plot(metrics, present, title, ylabel)
    counts = [c for c in PARTICIPATION_COLUMNS if has_values(metrics, c)]
    if counts:
        figures["participation.png"] = _participation_plot(metrics, counts)
    return figures


def _integer_ticks(axis: Axis) -> None:
    """Tick whole numbers only (rounds, client counts)."""
    from matplotlib.ticker import MaxNLocator

    locator = axis.get_major_locator()
    if isinstance(locator, MaxNLocator):  # matplotlib's default AutoLocator is one
        locator.set_params(integer=True)


def _line_plot(
    metrics: pd.DataFrame, series: dict[str, str], title: str, ylabel: str
) -> Figure:
    fig = agg_figure(7, 4.2, dpi=110)
    ax = fig.add_subplot()
    for column, label in series.items():
        rows = metrics[[ROUND, column]].dropna()
        ax.plot(rows[ROUND], rows[column], marker="o", label=label)
    ax.set(title=title, xlabel=ROUND, ylabel=ylabel)
    _integer_ticks(ax.xaxis)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def _participation_plot(metrics: pd.DataFrame, columns: list[str]) -> Figure:
    rows = metrics[metrics[ROUND] > 0] if (metrics[ROUND] > 0).any() else metrics
    fig = agg_figure(7, 4.2, dpi=110)
    ax = fig.add_subplot()
    width = 0.8 / len(columns)
    for i, column in enumerate(columns):
        offset = (i - (len(columns) - 1) / 2) * width
        ax.bar(
            rows[ROUND] + offset,
            rows[column].fillna(0),
            width=width,
            label=PARTICIPATION_LABELS[column],
        )
    ax.set(title="Clients per round", xlabel=ROUND, ylabel="clients")
    _integer_ticks(ax.xaxis)
    _integer_ticks(ax.yaxis)
    ax.grid(alpha=0.3, axis="y")
    # Headroom above the tallest bar keeps the legend off the bars.
    tallest = float(rows[columns].fillna(0).to_numpy().max())
    ax.set_ylim(0, max(tallest, 1.0) * (1.3 if len(columns) <= 3 else 1.5))
    ax.legend(fontsize="small", loc="upper center", ncol=min(len(columns), 3))
    fig.tight_layout()
    return fig


def has_values(metrics: pd.DataFrame, column: str) -> bool:
    """Whether ``metrics`` has ``column`` with a value in some round."""
    return column in metrics.columns and bool(metrics[column].notna().any())

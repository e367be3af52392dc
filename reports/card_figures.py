"""The model card's PNG figures: confusion matrix, column importance, saliency.

Drawn on :func:`fedge.reports.canvas.agg_figure`, as the run's plots are.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedge.edge_export.explanations import ColumnImportance
from fedge.reports.canvas import agg_figure


def plot_confusion_matrix(
    confusion: np.ndarray, class_names: Sequence[str], path: Path
) -> Path:
    """Draw the confusion matrix (rows true, columns predicted) with its counts."""
    n = len(class_names)
    size = min(3.0 + 0.45 * n, 10.0)
    fig = agg_figure(size, size, dpi=100)
    ax = fig.add_subplot()
    ax.imshow(confusion, cmap="Blues")
    ax.set(
        title="Confusion matrix (held-out data)",
        xlabel="predicted",
        ylabel="true",
        xticks=range(n),
        yticks=range(n),
    )
    ax.set_xticklabels(class_names, rotation=90 if n > 6 else 0)
    ax.set_yticklabels(class_names)
    top = confusion.max() if confusion.size else 0
    for (i, j), count in np.ndenumerate(confusion):
        ax.text(
            j,
            i,
            str(int(count)),
            ha="center",
            va="center",
            fontsize=8,
            color="white" if count > top / 2 else "black",
        )
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_importance(importances: Sequence[ColumnImportance], path: Path) -> Path:
    """Horizontal bars of each column's accuracy drop, most important on top."""
    shown = list(importances)[:20]
    fig = agg_figure(7.0, 1.2 + 0.3 * len(shown), dpi=100)
    ax = fig.add_subplot()
    positions = np.arange(len(shown))[::-1]
    ax.barh(
        positions,
        [100 * c.importance for c in shown],
        xerr=[100 * c.std for c in shown],
        color="tab:blue",
    )
    ax.set_yticks(positions)
    ax.set_yticklabels([c.column for c in shown])
    ax.set(
        title="Permutation importance (held-out accuracy lost)",
        xlabel="accuracy points lost when the column is shuffled",
    )
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_saliency(
    inputs: np.ndarray, saliency: np.ndarray, title: str, path: Path
) -> Path:
    """Each example (top) above its occlusion saliency (bottom).

    Inputs of shape ``(C, H, W)`` show their channel mean as an image; ``(C, T)``
    series and flat ``(d,)`` inputs show as lines with the saliency below.
    """
    n = len(inputs)
    fig = agg_figure(2.2 * max(n, 1) + 1.0, 4.4, dpi=100)
    limit = float(np.abs(saliency).max()) or 1.0
    for i in range(n):
        x, s = inputs[i], saliency[i]
        top = fig.add_subplot(2, n, i + 1)
        bottom = fig.add_subplot(2, n, n + i + 1)
        if s.ndim == 2:
            top.imshow(x.reshape(-1, *s.shape).mean(axis=0), cmap="gray")
            shown = bottom.imshow(s, cmap="RdBu_r", vmin=-limit, vmax=limit)
            for ax in (top, bottom):
                ax.set_xticks([])
                ax.set_yticks([])
        else:
            for channel in x.reshape(-1, s.shape[-1]):
                top.plot(channel, linewidth=0.8)
            shown = bottom.imshow(
                s.reshape(1, -1),
                cmap="RdBu_r",
                vmin=-limit,
                vmax=limit,
                aspect="auto",
            )
            bottom.set_yticks([])
        top.set_title(f"example {i + 1}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.colorbar(shown, ax=fig.axes, shrink=0.6, label="probability drop")
    fig.savefig(path)
    return path

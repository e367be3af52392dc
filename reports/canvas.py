"""A matplotlib figure on the Agg canvas, for every PNG the reports draw.

matplotlib's object API: no display, no global pyplot state, so reports can be
drawn in a server process, a thread or a notebook alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def agg_figure(width: float, height: float, *, dpi: int) -> Figure:
    """Return an empty figure of ``width`` × ``height`` inches on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig

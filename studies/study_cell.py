"""One cell of a study: run a simulation, read back its figures, never stop the study.

The studies (:mod:`fedge.studies.privacy_utility`, :mod:`fedge.studies.series_accuracy`,
:mod:`fedge.studies.fairness_comparison`) each run a grid of federated runs through
:func:`fedge.simulations.simulate.simulate`. A run that fails is recorded as failed with
its error, so one bad cell does not cost the hours the others took.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedge.shared import keys
from fedge.shared.errors import FedgeError
from fedge.shared.run_folder import (
    CLIENTS,
    COMPLETE,
    EPSILON_MAX,
    METRICS_JSONL_FILE,
    UNKNOWN,
    read_status,
)
from fedge.simulations.simulate import simulate

# The repository; studies write their results beside the benchmarks' and their
# Markdown tables beside their own modules.
ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
TABLES_DIR = Path(__file__).resolve().parent

FAILED = "failed"


def epsilon_label(target_epsilon: float) -> str:
    """Column heading: ``ε = 3`` or ``no DP``."""
    return "no DP" if math.isinf(target_epsilon) else f"ε = {target_epsilon:g}"


def epsilon_slug(target_epsilon: float) -> str:
    """Return the privacy level as a run folder names it: ``eps3``, ``epsinf``."""
    return "epsinf" if math.isinf(target_epsilon) else f"eps{target_epsilon:g}"


def read_cell(run_dir: Path) -> dict[str, Any]:
    """Return the figures of one finished run: accuracy, and the ε the clients spent.

    ``epsilon`` is the largest cumulative ε any client reported in the last
    round (``None`` without DP); ``delta``, ``noise_multiplier`` and
    ``examples_per_client`` are read from the same round's client rows.
    """
    status = read_status(run_dir)
    last = _last_row(run_dir / METRICS_JSONL_FILE)
    clients = last.get(CLIENTS) or []
    examples = [c[keys.NUM_EXAMPLES] for c in clients if keys.NUM_EXAMPLES in c]

    def largest(key: str) -> float | None:
        values = [c[key] for c in clients if c.get(key) is not None]
        return max(values) if values else None

    epsilon = last.get(EPSILON_MAX)
    return {
        "state": status.get("state", UNKNOWN),
        "accuracy": status.get("final_accuracy"),
        "rounds": status.get("final_round"),
        "epsilon": None if epsilon is None or math.isnan(epsilon) else epsilon,
        "delta": largest(keys.DELTA),
        "noise_multiplier": largest(keys.NOISE_MULTIPLIER),
        "examples_per_client": min(examples) if examples else None,
        "run_dir": str(run_dir),
    }


def _last_row(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else {}


def run_cell(
    overrides: dict[str, Any],
    *,
    num_clients: int | None,
    output_dir: Path,
    name: str,
    simulate_fn: Callable[..., Path] = simulate,
) -> dict[str, Any]:
    """Run one federated simulation quietly; return :func:`read_cell`'s figures.

    Parameters
    ----------
    overrides : dict
        The run config of this cell.
    num_clients : int or None
        Virtual clients; ``None`` takes the run config's federation size.
    output_dir : Path
        Parent of the run folder.
    name : str
        The run folder's name under ``output_dir``.
    simulate_fn : callable
        :func:`fedge.simulations.simulate.simulate` (tests pass a stand-in).

    Returns
    -------
    dict
        :func:`read_cell`'s figures and ``wall_time_s``; a run that raised a
        :class:`FedgeError` is ``{"state": "failed", "accuracy": None, "error": ...}``.
    """
    started = time.monotonic()
    cell: dict[str, Any]
    try:
        run_dir = simulate_fn(
            overrides,
            num_clients=num_clients,
            output_dir=output_dir,
            run_name=name,
            echo=lambda _line: None,
        )
        cell = read_cell(run_dir)
    except FedgeError as e:
        cell = {"state": FAILED, "accuracy": None, "error": str(e)}
    cell["wall_time_s"] = round(time.monotonic() - started, 1)
    return cell


def completed(cell: dict[str, Any] | None) -> bool:
    """Whether a cell's run finished with a final accuracy."""
    return (
        cell is not None
        and cell.get("state") == COMPLETE
        and cell.get("accuracy") is not None
    )


def format_cell(cell: dict[str, Any] | None) -> str:
    """``0.921 (ε 7.99)``; ``0.975`` without DP; ``failed`` or ``—``."""
    if cell is None:
        return "—"
    if not completed(cell):
        return FAILED
    text = f"{cell['accuracy']:.3f}"
    if cell.get("epsilon") is not None:
        text += f" (ε {cell['epsilon']:.2f})"
    return text


def cell_summary(cell: dict[str, Any]) -> str:
    """Return a progress line's tail: ``0.921 (ε 7.99) in 42 s`` (and any error)."""
    text = f"{format_cell(cell)} in {cell['wall_time_s']:.0f} s"
    return text + (f" ({cell['error']})" if "error" in cell else "")


def format_mean_range(values: Sequence[float]) -> str:
    """Return ``0.716 (0.664–0.807)``: the mean over runs, and their range if several."""
    text = f"{statistics.mean(values):.3f}"
    if len(values) > 1:
        text += f" ({min(values):.3f}–{max(values):.3f})"
    return text

"""``metrics.csv`` and ``metrics.jsonl`` read back: the rounds a run recorded.

The coordinator's :class:`fedge.server.metrics_history.MetricsHistory` writes
them; it and every reader (``fedge status``, the reports) read them here, so
what counts as a recorded round is decided once: the CSV's rows (rewritten
atomically each round) are trusted, and each is joined with its round's
``metrics.jsonl`` object, whose extra keys hold the nested details. A JSONL line
without a CSV row (a crash between the two writes) is left out.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedge.shared.json_records import json_safe, read_jsonl
from fedge.shared.run_folder import METRICS_CSV_FILE, METRICS_JSONL_FILE, ROUND

logger = logging.getLogger(__name__)

_INT_RE = re.compile(r"^[+-]?\d+$")


@dataclass(frozen=True)
class MetricsFiles:
    """What the two files hold.

    Attributes
    ----------
    header : list of str
        ``metrics.csv``'s columns, in order.
    rows : list of dict
        The CSV rows, values typed back (int, float, bool, str), empty cells left out.
    records : list of dict
        One object per row: its ``metrics.jsonl`` object overlaid with the row.
    jsonl_matches : bool
        Whether ``metrics.jsonl`` holds exactly the rows' rounds; when not, a
        writer rewrites it from ``records``.
    """

    header: list[str]
    rows: list[dict[str, Any]]
    records: list[dict[str, Any]]
    jsonl_matches: bool


def read_metrics_files(
    run_dir: Path, *, on_bad_line: Callable[[int, str], None] | None = None
) -> MetricsFiles | None:
    """Read ``metrics.csv`` and ``metrics.jsonl`` of ``run_dir``; None without the CSV.

    Parameters
    ----------
    run_dir : Path
    on_bad_line : callable, optional
        Called, besides a logged warning, with the line number and reason of
        each ``metrics.jsonl`` line that is not JSON (it is dropped).
    """
    csv_path = Path(run_dir) / METRICS_CSV_FILE
    jsonl_path = Path(run_dir) / METRICS_JSONL_FILE
    if not csv_path.exists():
        return None
    with csv_path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = [
            {k: _parse_cell(v) for k, v in raw.items() if v not in ("", None)}
            for raw in reader
        ]

    def drop(number: int, reason: str) -> None:
        logger.warning(
            "%s line %d is not JSON (%s); it is dropped", jsonl_path, number, reason
        )
        if on_bad_line is not None:
            on_bad_line(number, reason)

    by_round = {r.get(ROUND): r for r in read_jsonl(jsonl_path, on_bad_line=drop)}
    records = [{**by_round.get(row[ROUND], {}), **json_safe(row)} for row in rows]
    matches = set(by_round) == {r[ROUND] for r in rows}
    return MetricsFiles(header, rows, records, matches)


def read_metrics_records(run_dir: Path) -> list[dict[str, Any]]:
    """Return each recorded round's object (row fields plus details), oldest first."""
    files = read_metrics_files(run_dir)
    return [] if files is None else files.records


def _parse_cell(text: str) -> Any:
    """Return a CSV cell back to int, float, bool or str (None for empty)."""
    if _INT_RE.match(text):
        return int(text)
    if text in ("True", "False"):
        return text == "True"
    try:
        return float(text)
    except ValueError:
        return text

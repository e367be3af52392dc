"""The per-round metrics history of a run: ``metrics.csv`` and ``metrics.jsonl``.

``metrics.csv`` holds one flat row per round (what a plot or a spreadsheet
reads); ``metrics.jsonl`` holds one JSON object per round with the same fields
plus nested details such as per-client figures. The CSV is rewritten atomically
from memory each round, so its header can grow when a new column appears and a
reader never sees half a file; the JSONL is appended to (and rewritten only on
truncation), because its per-client details grow with the run.

On resume, :meth:`MetricsHistory.resume` cuts both files back to the
checkpoint's round and refills any round the files lost from the checkpoint's
own copy, so the history has no duplicate and no gap.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fedge.shared.atomic_io import atomic_write_text
from fedge.shared.errors import FedgeError
from fedge.shared.json_records import json_safe, plain
from fedge.shared.metrics_files import read_metrics_files
from fedge.shared.run_folder import (
    METRIC_COLUMNS,
    METRICS_CSV_FILE,
    METRICS_JSONL_FILE,
    ROUND,
)

logger = logging.getLogger(__name__)


class HistoryError(FedgeError, ValueError):
    """A row does not fit the history (no round, or a round already recorded)."""


class MetricsHistory:
    """Rows of per-round metrics, kept in memory and mirrored to the run folder.

    Parameters
    ----------
    run_dir : str or Path
        The run folder; ``metrics.csv`` and ``metrics.jsonl`` live there. Existing
        files are loaded (for a resumed run).
    columns : iterable of str, default :data:`fedge.shared.run_folder.METRIC_COLUMNS`
        Declared columns, in CSV order. The first must be ``"round"``.
    """

    def __init__(
        self, run_dir: str | Path, *, columns: Iterable[str] = METRIC_COLUMNS
    ) -> None:
        self.run_dir = Path(run_dir)
        self._columns = list(columns)
        if not self._columns or self._columns[0] != ROUND:
            raise HistoryError(
                f"the first column must be {ROUND!r}, got {self._columns[:1]}"
            )
        self._rows: list[dict[str, Any]] = []
        self._records: list[dict[str, Any]] = []  # the JSONL objects, one per row
        self._jsonl_stale = False  # the file differs from memory: rewrite, not append
        self._load()

    @property
    def csv_path(self) -> Path:
        """``<run_dir>/metrics.csv``."""
        return self.run_dir / METRICS_CSV_FILE

    @property
    def jsonl_path(self) -> Path:
        """``<run_dir>/metrics.jsonl``."""
        return self.run_dir / METRICS_JSONL_FILE

    @property
    def columns(self) -> list[str]:
        """The CSV header: declared columns, then new ones in order of appearance."""
        return list(self._columns)

    def rows(self) -> list[dict[str, Any]]:
        """Return copies of the rows, oldest first."""
        return [dict(r) for r in self._rows]

    def records(self) -> list[dict[str, Any]]:
        """Return copies of the JSONL objects (row fields plus details), oldest first."""
        return [dict(r) for r in self._records]

    def last_round(self) -> int | None:
        """Return the newest round recorded, or None when empty."""
        return self._rows[-1][ROUND] if self._rows else None

    def append(
        self, row: Mapping[str, Any], *, details: Mapping[str, Any] | None = None
    ) -> None:
        """Record one round.

        Parameters
        ----------
        row : mapping
            Flat values (numbers, strings, None) keyed by column; must contain an
            integer ``"round"`` newer than every recorded one.
        details : mapping, optional
            Extra, possibly nested, values for ``metrics.jsonl`` only (e.g.
            ``{"clients": [...]}``).

        Raises
        ------
        HistoryError
            Without an integer round, for a round not after the last one, or when
            ``details`` reuses a column name.
        """
        server_round = row.get(ROUND)
        if isinstance(server_round, bool) or not isinstance(server_round, int):
            raise HistoryError(f"a metrics row needs an integer {ROUND!r}, got {row!r}")
        last = self.last_round()
        if last is not None and server_round <= last:
            raise HistoryError(
                f"round {server_round} is not after the last recorded round {last}; "
                "on resume, call truncate_after() or resume() first"
            )
        clash = sorted(set(details or {}) & set(row))
        if clash:
            raise HistoryError(f"details reuse the row's column names {clash}")
        new_row = {k: plain(v) for k, v in row.items()}
        record = {**json_safe(new_row), **json_safe(dict(details or {}))}
        for key in new_row:
            if key not in self._columns:
                self._columns.append(key)
        self._rows.append(new_row)
        self._records.append(record)
        # JSONL first, CSV second: the CSV is what _load trusts, so a crash in
        # between leaves an extra JSONL line that loading discards.
        if self._jsonl_stale:
            self._write_jsonl()
        else:
            self._append_jsonl(record)
        self._write_csv()

    def truncate_after(self, server_round: int) -> None:
        """Forget every round after ``server_round`` (in memory and on disk)."""
        keep = [i for i, r in enumerate(self._rows) if r[ROUND] <= server_round]
        self._rows = [self._rows[i] for i in keep]
        self._records = [self._records[i] for i in keep]
        self._write_jsonl()
        self._write_csv()

    def resume(
        self, server_round: int, backup_rows: Iterable[Mapping[str, Any]] = ()
    ) -> None:
        """Make the history end exactly at ``server_round`` for a resumed run.

        Rounds after it are dropped; rounds up to it that the files lack but
        ``backup_rows`` (the checkpoint's ``metrics_history``) has are put back.
        """
        self.truncate_after(server_round)
        have = {r[ROUND] for r in self._rows}
        missing = [
            dict(r)
            for r in backup_rows
            if r.get(ROUND) is not None
            and r[ROUND] <= server_round
            and r[ROUND] not in have
        ]
        if not missing:
            return
        logger.warning(
            "Metrics of rounds %s were missing from %s; restored from the checkpoint",
            sorted(r[ROUND] for r in missing),
            self.csv_path,
        )
        merged = sorted(
            [(r, rec) for r, rec in zip(self._rows, self._records, strict=True)]
            + [({k: plain(v) for k, v in r.items()}, json_safe(r)) for r in missing],
            key=lambda pair: pair[0][ROUND],
        )
        self._rows = [r for r, _ in merged]
        self._records = [rec for _, rec in merged]
        for row in self._rows:
            for key in row:
                if key not in self._columns:
                    self._columns.append(key)
        self._write_jsonl()
        self._write_csv()

    # ------------------------------------------------------------------ files
    def _write_csv(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self._columns, lineterminator="\n")
        writer.writeheader()
        for row in self._rows:
            # csv writes floats with repr(): they read back bit-identical
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        atomic_write_text(self.csv_path, buffer.getvalue())

    def _append_jsonl(self, record: dict[str, Any]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self.jsonl_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _write_jsonl(self) -> None:
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in self._records)
        atomic_write_text(self.jsonl_path, text)
        self._jsonl_stale = False

    def _load(self) -> None:
        if not self.csv_path.exists():
            if self.jsonl_path.exists():
                self._jsonl_stale = True  # lines without rows: drop on next write
            return

        def drop(number: int, reason: str) -> None:
            self._jsonl_stale = True

        files = read_metrics_files(self.run_dir, on_bad_line=drop)
        if files is None:  # the CSV went between the check and the read
            return
        for key in files.header:
            if key not in self._columns:
                self._columns.append(key)
        self._rows = files.rows
        self._records = files.records
        if not files.jsonl_matches:
            self._jsonl_stale = True


def summarize_clients(
    clients: Iterable[Mapping[str, Any]], key: str
) -> tuple[float | None, float | None]:
    """``(max, mean)`` of a numeric per-client figure, over clients reporting it.

    For ``epsilon-max``/``epsilon-mean`` from a round's client rows
    (``RoundOutcome.clients``; refusing clients included: their spent ε counts too).
    """
    values = [
        float(c[key])
        for c in clients
        if isinstance(c.get(key), int | float) and math.isfinite(c[key])
    ]
    if not values:
        return None, None
    return max(values), sum(values) / len(values)

"""Read raw inputs and long recordings from files, on a device without pandas.

``.npz`` and ``.csv`` are read with NumPy and the standard library; pandas is
used for ``.csv`` only when installed, and needed for ``.parquet``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np

from .encoding import describe_row, parse_number
from .errors import InputError

# Column names a recording CSV's time column may have; every other column is a channel.
TIMESTAMP_COLUMNS = ("timestamp", "time")


def read_input(path: str | os.PathLike[str]) -> Any:
    """Read a file of raw inputs for :meth:`EdgeModel.predict`.

    ``.npz``: the array ``x`` (fedge's data layout; ``y`` is ignored).
    ``.csv``: a DataFrame if pandas is installed, else a dict of columns of
    strings (empty cells missing). ``.parquet``: needs pandas and pyarrow.

    Raises
    ------
    InputError
        Missing file, unknown suffix, unreadable content, no ``x`` in an npz.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _npz_arrays(path, "of inputs")["x"]
    if suffix == ".csv":
        try:
            import pandas as pd
        except ImportError:
            return _read_csv_columns(path)
        try:
            return pd.read_csv(path)
        except (ValueError, UnicodeDecodeError) as e:  # ParserError is a ValueError
            raise InputError(f"cannot read CSV file {path}: {e}") from e
    if suffix == ".parquet":
        try:
            import pandas as pd

            return pd.read_parquet(path)
        except ImportError as e:
            raise InputError(
                f"reading {path} needs pandas and pyarrow (pip install pandas "
                "pyarrow); or pass the inputs as .csv or .npz"
            ) from e
    raise InputError(
        f"unsupported input file type {path.suffix!r} for {path}; expected "
        ".csv, .npz or .parquet"
    )


def read_recording(
    path: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read one long sensor recording for :meth:`EdgeModel.stream`.

    ``.npz``: an array ``x`` of shape ``(channels, steps)`` and optionally ``t``,
    the timestamps. ``.csv``: a header row, one row per step, an optional
    ``timestamp`` (or ``time``) column, every other column a channel in file
    order. Read without pandas.

    Returns
    -------
    recording : ndarray of float64, shape (channels, steps)
    timestamps : ndarray or None, shape (steps,)

    Raises
    ------
    InputError
        Missing file, another suffix, no ``x``, a non-numeric channel value.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"recording file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays = _npz_arrays(path, "of shape (channels, steps)")
        x, t = arrays["x"], arrays.get("t")
        if x.ndim != 2:
            raise InputError(
                f"{path}: a recording 'x' has shape (channels, steps), got {x.shape}"
            )
        return x.astype(np.float64), t
    if suffix != ".csv":
        raise InputError(
            f"unsupported recording file type {path.suffix!r} for {path}; expected "
            ".csv (a column per channel) or .npz (x of shape (channels, steps))"
        )
    columns = _read_csv_columns(path)
    time_column = next((c for c in columns if c.lower() in TIMESTAMP_COLUMNS), None)
    timestamps = columns.pop(time_column) if time_column else None
    channels = []
    for name, values in columns.items():
        parsed = np.array(
            [np.nan if v is None else parse_number(v) for v in values], dtype=object
        )
        bad = next((i for i, v in enumerate(parsed) if v is None), None)
        if bad is not None:
            raise InputError(
                f"{path}: non-numeric value {values[bad]!r} in channel {name!r} "
                f"({describe_row(bad)}); expected a number"
            )
        channels.append(parsed.astype(np.float64))
    if not channels:
        raise InputError(f"{path}: no channel columns besides the time column")
    return np.stack(channels), timestamps


def _npz_arrays(path: Path, what_x_is: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, which must hold ``x``."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise InputError(
                    f"{path} must hold an array 'x' {what_x_is}; arrays found: "
                    f"{sorted(archive.files)}"
                )
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"cannot read .npz file {path}: {e}") from e


def _read_csv_columns(path: Path) -> dict[str, np.ndarray]:
    """CSV without pandas: column name -> object array of strings (None if empty)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise InputError(f"cannot read CSV file {path}: file is empty")
    header, body = rows[0], rows[1:]
    bad = next((i for i, r in enumerate(body) if len(r) != len(header)), None)
    if bad is not None:
        raise InputError(
            f"cannot read CSV file {path}: {len(body[bad])} fields in "
            f"{describe_row(bad)}, expected {len(header)} as in the header"
        )
    columns = {}
    for j, name in enumerate(header):
        values = np.array([r[j] if r[j] != "" else None for r in body], dtype=object)
        columns[name] = values
    return columns

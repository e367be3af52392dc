"""Encode raw tables, images and time series into model inputs: fedge's one encoder.

Training (``fedge.shared.preprocessing.Preprocessing.transform_features``) and
the device (:meth:`EdgeModel.predict`) both call :func:`transform_features`
with the encoding fitted on the reference data (``Preprocessing.to_dict()``,
stored in the model's ``fedge.preprocessing`` metadata), so a device encodes
exactly as training did. NumPy only: a DataFrame is read through its own
methods, never by importing pandas.

Row numbers in messages are 1-based data rows: row 1 is the first row after
a CSV header (file line 2).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import InputError

logger = logging.getLogger(__name__)


def describe_row(position: int) -> str:
    """Describe a 0-based position as the 1-based data row users see."""
    return f"data row {position + 1}, 1-based, header excluded"


def value_string(value: Any) -> str:
    """Return the string form used to compare labels and categories.

    Integral floats lose their ``.0`` so that ``3``, ``3.0`` and ``"3"`` agree:
    pandas reads an integer column holding a missing value as float.
    """
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, float | np.floating) and math.isfinite(value):
        if float(value).is_integer():
            return str(int(value))
        return repr(float(value))
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def parse_number(value: Any) -> float | None:
    """Parse one cell like ``pandas.to_numeric``; None when it is not a number."""
    if isinstance(value, bool | np.bool_ | int | float | np.integer | np.floating):
        return float(value)
    if isinstance(value, str) and "_" not in value:
        try:
            number = float(value)
        except ValueError:
            return None
        # pandas does not read the text "nan" as a number.
        return None if math.isnan(number) else number
    return None


def _is_missing_value(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float | np.floating):
        return bool(np.isnan(value))
    # pandas.NA and NaT without importing pandas.
    return type(value).__name__ in ("NAType", "NaTType")


def _missing_mask(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        missing: np.ndarray = np.isnan(values)
        return missing
    if values.dtype.kind == "O":
        return np.fromiter(
            (_is_missing_value(v) for v in values), dtype=bool, count=len(values)
        )
    return np.zeros(len(values), dtype=bool)


# ------------------------------------------------------------------ tables
def _numeric_column(
    values: np.ndarray, column: str, prep: Mapping[str, Any], source: str
) -> np.ndarray:
    missing = _missing_mask(values)
    if values.dtype.kind in "iufb":
        parsed = values.astype(np.float64)
    else:
        parsed = np.full(len(values), np.nan)
        for i, value in enumerate(values):
            if missing[i]:
                continue
            number = parse_number(value)
            if number is None:
                raise InputError(
                    f"non-numeric value {value!r} in numeric column {column!r} "
                    f"({source}, {describe_row(i)}); expected a number"
                )
            parsed[i] = number
    parsed = _fill_missing(parsed, missing, column, prep, source)
    if not np.all(np.isfinite(parsed)):
        first = int(np.flatnonzero(~np.isfinite(parsed))[0])
        raise InputError(
            f"infinite value in numeric column {column!r} ({source}, "
            f"{describe_row(first)}); expected a finite number"
        )
    return parsed


def _fill_missing(
    values: np.ndarray,
    missing: np.ndarray,
    column: str,
    prep: Mapping[str, Any],
    source: str,
) -> np.ndarray:
    if not missing.any():
        return values
    if prep.get("impute", "none") == "none":
        first = int(np.flatnonzero(missing)[0])
        raise InputError(
            f"missing value in column {column!r} ({source}, "
            f"{describe_row(first)}; {int(missing.sum())} missing in total); the "
            "encoding was fitted with impute='none', so every value is required. "
            "Fill it in, drop the row, or train with impute = 'mean'."
        )
    values = values.copy()
    values[missing] = prep["fill_values"][column]
    return values


def _one_hot(
    values: np.ndarray,
    column: str,
    categories: list[str],
    prep: Mapping[str, Any],
    source: str,
) -> np.ndarray:
    missing = _missing_mask(values)
    strings = np.array([value_string(v) for v in values], dtype=object)
    strings = _fill_missing(strings, missing, column, prep, source)
    index = {c: i for i, c in enumerate(categories)}
    out = np.zeros((len(values), len(categories)))
    unknown: tuple[int, str] | None = None
    for row, value in enumerate(strings):
        i = index.get(value)
        if i is None:
            unknown = unknown or (row, value)
        else:
            out[row, i] = 1.0
    if unknown is not None:
        logger.warning(
            "Unknown category %r in column %r (%s, %s); encoded as all zeros.",
            unknown[1],
            column,
            source,
            describe_row(unknown[0]),
        )
    return out


def _is_dataframe(data: Any) -> bool:
    # Duck-typed so pandas is never imported just to ask.
    return type(data).__name__ == "DataFrame" and hasattr(data, "columns")


def _frame_columns(frame: Any, source: str) -> dict[str, np.ndarray]:
    """DataFrame -> column name -> NumPy array (missing cells as NaN or None)."""
    columns: dict[str, np.ndarray] = {}
    for name in frame.columns:
        series = frame[name]
        if isinstance(series, type(frame)):  # duplicated column name
            raise InputError(f"{source}: column {str(name)!r} appears more than once")
        kind = getattr(series.dtype, "kind", "O")
        if kind in "iuf" and series.isna().any():
            columns[str(name)] = series.to_numpy(dtype=np.float64, na_value=np.nan)
        elif kind in "iufb":
            columns[str(name)] = series.to_numpy()
        else:
            # A copy: pandas may hand out a read-only view of the column.
            array = series.to_numpy(dtype=object, copy=True)
            array[series.isna().to_numpy()] = None
            columns[str(name)] = array
    return columns


def _table_columns(
    data: Any, feature_columns: list[str], categorical: list[str], source: str
) -> dict[str, np.ndarray]:
    """Column name -> values, from a DataFrame, a column mapping or an array."""
    if _is_dataframe(data):
        return _frame_columns(data, source)
    if isinstance(data, Mapping):
        return {str(k): np.asarray(v) for k, v in data.items()}
    array = np.asarray(data)
    if categorical:
        raise InputError(
            f"{source}: an array cannot supply categorical columns {categorical}; "
            f"pass a DataFrame or a dict with columns {feature_columns}"
        )
    if array.ndim != 2 or array.shape[1] != len(feature_columns):
        raise InputError(
            f"{source}: expected an array of shape (n, {len(feature_columns)}) "
            f"with columns {feature_columns}, got shape {tuple(array.shape)}"
        )
    return {c: array[:, j] for j, c in enumerate(feature_columns)}


def _transform_tabular(prep: Mapping[str, Any], data: Any, source: str) -> np.ndarray:
    feature_columns: list[str] = list(prep["feature_columns"])
    categories: dict[str, list[str]] = dict(prep.get("categories", {}))
    columns = _table_columns(data, feature_columns, list(categories), source)
    missing = [c for c in feature_columns if c not in columns]
    if missing:
        raise InputError(
            f"{source} is missing feature column(s) {missing}; expected "
            f"{feature_columns}, found {list(columns)}"
        )
    lengths = {len(columns[c]) for c in feature_columns}
    if len(lengths) > 1:
        raise InputError(f"{source}: feature columns have different lengths {lengths}")
    n_rows = lengths.pop() if lengths else 0
    blocks = []
    numeric_columns = list(prep.get("numeric_columns", ()))
    if numeric_columns:
        numeric = np.empty((n_rows, len(numeric_columns)))
        for j, column in enumerate(numeric_columns):
            numeric[:, j] = _numeric_column(columns[column], column, prep, source)
        means = np.asarray(prep["means"], dtype=np.float64)
        scales = np.asarray(prep["scales"], dtype=np.float64)
        blocks.append((numeric - means) / scales)
    for column, cats in categories.items():
        blocks.append(_one_hot(columns[column], column, list(cats), prep, source))
    if not blocks:
        return np.zeros((n_rows, 0), dtype=np.float32)
    return np.concatenate(blocks, axis=1).astype(np.float32)


# ------------------------------------------------------------------ flat rows
def _flat_rows(data: Any, label_column: str, source: str, what: str) -> np.ndarray:
    """Read a DataFrame or column mapping of flat numeric rows (label dropped)."""
    if _is_dataframe(data):
        # The frame's own conversion: one call instead of one per pixel column.
        values = data.drop(columns=[label_column], errors="ignore")
        try:
            array: np.ndarray = values.to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise InputError(
                f"{what} must be numeric ({source}); expected numbers, got a "
                f"non-numeric value: {e}"
            ) from e
        return array
    columns = {k: v for k, v in data.items() if k != label_column}
    try:
        return np.column_stack(
            [np.asarray(v, dtype=np.float64) for v in columns.values()]
        )
    except (TypeError, ValueError) as e:
        raise InputError(
            f"{what} must be numeric ({source}); expected numbers, got a "
            f"non-numeric value: {e}"
        ) from e


def _as_float64(array: np.ndarray, what: str, source: str) -> np.ndarray:
    """Return a numeric array as float64; refuse strings, objects and the like."""
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(
            f"{what} must be numeric, got dtype {array.dtype} ({source}); "
            "expected integers or floats"
        )
    return array.astype(np.float64)


# ------------------------------------------------------------------ images
def _transform_images(prep: Mapping[str, Any], data: Any, source: str) -> np.ndarray:
    c, h, w = (int(s) for s in prep["image_shape"])
    if _is_dataframe(data) or isinstance(data, Mapping):
        array = _flat_rows(data, prep["label_column"], source, "image pixels")
    else:
        array = np.asarray(data)
    if array.ndim == 2 and array.shape[1] == c * h * w:
        array = array.reshape(-1, c, h, w)
    elif array.ndim == 3 and c == 1 and array.shape[1:] == (h, w):
        array = array[:, None]
    elif not (array.ndim == 4 and array.shape[1:] == (c, h, w)):
        raise InputError(
            f"expected images of shape {(c, h, w)} or {c * h * w} values per row, "
            f"got an array of shape {tuple(array.shape)} ({source})"
        )
    array = _as_float64(array, "image pixels", source)
    bad = ~np.isfinite(array)
    if bad.any():
        first = int(np.flatnonzero(bad.reshape(len(array), -1).any(axis=1))[0])
        raise InputError(
            f"missing (NaN) or infinite pixel value in image {first + 1} ({source}); "
            "expected finite numbers, images cannot be imputed"
        )
    return (array / float(prep["pixel_scale"])).astype(np.float32)


# ------------------------------------------------------------------ time series
def series_array(
    data: Any, *, channels: int, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """Stack time series into ``(n, channels, steps)`` float64 and their lengths.

    A series' length is its steps up to the last one with any recorded value:
    trailing all-NaN steps are padding. A NaN or infinity inside a series is
    refused (series are not imputed).

    Raises
    ------
    InputError
        Wrong dimensions or channel count, non-numeric or missing values.
    """
    if isinstance(data, list | tuple):
        if not data:
            raise InputError(f"{source}: no time series given; expected at least one")
        parts = [np.asarray(s) for s in data]
        bad = next((i for i, p in enumerate(parts) if p.ndim != 2), None)
        if bad is not None:
            raise InputError(
                f"{source}: series {bad + 1} has shape {parts[bad].shape}; "
                "expected (channels, steps)"
            )
        longest = max(p.shape[1] for p in parts)
        array = np.full((len(parts), parts[0].shape[0], longest), np.nan)
        for i, p in enumerate(parts):
            if p.shape[0] != array.shape[1]:
                raise InputError(
                    f"{source}: series {i + 1} has {p.shape[0]} channels, series 1 "
                    f"has {array.shape[1]}; every series needs the same channels"
                )
            array[i, :, : p.shape[1]] = p
    else:
        array = np.asarray(data)
    if array.ndim != 3 or array.shape[1] != channels:
        raise InputError(
            f"{source}: expected time series of shape (n, {channels}, steps), got "
            f"an array of shape {tuple(array.shape)}"
        )
    array = _as_float64(array, "time series values", source)
    recorded = ~np.isnan(array).all(axis=1)  # (n, steps): any channel has a value
    lengths = np.where(
        recorded.any(axis=1), array.shape[2] - np.argmax(recorded[:, ::-1], axis=1), 0
    )
    inside = np.arange(array.shape[2])[None, :] < lengths[:, None]
    bad_steps = inside & ~np.isfinite(array).all(axis=1)
    if bad_steps.any():
        row, step = (int(i) for i in np.argwhere(bad_steps)[0])
        raise InputError(
            f"{source}: missing or non-finite value in series {row + 1} at step "
            f"{step + 1} (only trailing steps missing on every channel count as "
            "padding); time series cannot be imputed"
        )
    if (lengths == 0).any():
        row = int(np.flatnonzero(lengths == 0)[0])
        raise InputError(f"{source}: series {row + 1} has no recorded step")
    return array, lengths


def fix_length(array: np.ndarray, lengths: np.ndarray, steps: int) -> np.ndarray:
    """Zero every step past each series' length, then cut or zero-pad to ``steps``."""
    n, channels, have = array.shape
    out = np.zeros((n, channels, steps), dtype=np.float32)
    keep = min(have, steps)
    inside = np.arange(keep)[None, None, :] < lengths[:, None, None]
    out[:, :, :keep] = np.where(inside, array[:, :, :keep], 0.0)
    return out


def _transform_series(prep: Mapping[str, Any], data: Any, source: str) -> np.ndarray:
    channels, steps = (int(s) for s in prep["series_shape"])
    if _is_dataframe(data) or isinstance(data, Mapping):
        flat = _flat_rows(data, prep["label_column"], source, "time series values")
        if flat.shape[1] % channels:
            raise InputError(
                f"{source}: {flat.shape[1]} values per row do not split into "
                f"{channels} channels of equal length"
            )
        data = flat.reshape(len(flat), channels, -1)
    array, lengths = series_array(data, channels=channels, source=source)
    means = np.asarray(prep["channel_means"], dtype=np.float64)[:, None]
    scales = np.asarray(prep["channel_scales"], dtype=np.float64)[:, None]
    return fix_length((array - means) / scales, lengths, steps)


def transform_features(
    preprocessing: Mapping[str, Any], data: Any, *, source: str = "input"
) -> np.ndarray:
    """Encode raw inputs with a fitted encoding.

    Tabular encoding is numeric columns first, standardised with the reference
    mean and standard deviation, then one one-hot block per categorical column
    in ``categories`` order. Images are scaled by ``pixel_scale`` and reshaped
    to ``image_shape``. Time series are standardised per channel and cut or
    zero-padded at the end to ``series_shape``'s length.

    Parameters
    ----------
    preprocessing : mapping
        ``Preprocessing.to_dict()`` (the model's ``fedge.preprocessing``).
    data : ndarray, DataFrame or mapping of column name to values
        Tabular: a frame or dict holding every feature column (extra columns
        ignored, order free), or an ``(n, n_features)`` numeric array in
        ``feature_columns`` order. Images: ``(n, C*H*W)``, ``(n, C, H, W)``, or
        ``(n, H, W)`` when ``C == 1``; a frame is flat pixel rows (label dropped).
        Time series: ``(n, C, steps)`` (trailing all-NaN steps pad shorter
        ones), a list of ``(C, steps_i)`` arrays, or a frame of flat
        channel-major rows (label dropped).
    source : str
        File or description named in error messages.

    Returns
    -------
    ndarray of float32, shape ``(n, *input_shape)``

    Raises
    ------
    InputError
        Missing columns, wrong width or image size, non-numeric or missing values.
    """
    if preprocessing["kind"] == "image":
        return _transform_images(preprocessing, data, source)
    if preprocessing["kind"] == "series":
        return _transform_series(preprocessing, data, source)
    return _transform_tabular(preprocessing, data, source)

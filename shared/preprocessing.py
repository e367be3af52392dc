"""Fit the encoding that turns raw tables, images and series into model inputs.

A :class:`Preprocessing` is fitted once, on the coordinator's reference data
(or on a built-in dataset's training split), and then travels as plain JSON:
to every client, into checkpoints and into the edge model's metadata. Encoding
itself is the device runtime's (:mod:`fedge.edge_export.runtime.encoding`,
NumPy only), which ``Preprocessing.transform_features`` calls, so training
and a device encode with the same code. Fitting is NumPy/pandas.

Tabular encoding is numeric columns first, standardised with the reference
mean and standard deviation, then one one-hot block per categorical column in
``categories`` order. Images are scaled by ``pixel_scale`` and reshaped to
``image_shape`` (channels, height, width). Time series ``(channels, steps)``
are standardised per channel and brought to ``series_shape``'s length: longer
ones are cut at the end, shorter ones padded at the end with zeros (the
channel's mean once standardised). A shorter series in a fixed-size array ends
in all-NaN time steps.

Row numbers in messages are 1-based data rows: row 1 is the first row after
a CSV header (file line 2).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

# The one encoder, shared with the device; it needs only NumPy.
from fedge.edge_export.runtime import encoding
from fedge.edge_export.runtime.encoding import (
    describe_row,
    transform_features,
    value_string,
)
from fedge.edge_export.runtime.errors import InputError
from fedge.shared.errors import DataError
from fedge.shared.lazy_import import lazy_module

if TYPE_CHECKING:
    import pandas as pd
else:
    # pandas costs ~0.4 s to import; a node reading cached arrays never needs it.
    pd = lazy_module("pandas")

KINDS = ("tabular", "image", "series")
IMPUTE_MODES = ("none", "mean")
# An object column counts as numeric with typos, rather than categorical, when at
# least this share of its non-missing values parse as numbers.
NUMERIC_SHARE = 0.9
# ``DataFrame.attrs`` key read_table uses to mark pixel columns as one image.
IMAGE_SHAPE_ATTR = "fedge_image_shape"
# ``DataFrame.attrs`` key read_table uses to mark flat columns as (channels, steps)
# time series; trailing all-NaN steps pad a shorter series.
SERIES_SHAPE_ATTR = "fedge_series_shape"


@contextmanager
def _as_data_error() -> Iterator[None]:
    """Raise the encoder's :class:`InputError` as fedge's :class:`DataError`.

    The encoder cannot import fedge's errors (a device runs it alone), and
    training code catches ``DataError``; the message stays the encoder's.
    """
    try:
        yield
    except InputError as e:
        raise DataError(str(e)) from e


def _is_missing(series: pd.Series) -> np.ndarray:
    return np.asarray(series.isna(), dtype=bool)


def _parse_numeric(series: pd.Series) -> tuple[np.ndarray, int | None]:
    """Parse a column as float; return values and the first unparseable position.

    Missing values stay NaN and do not count as unparseable.
    """
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype=np.float64, na_value=np.nan), None
    parsed = pd.to_numeric(series, errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan
    )
    bad = np.flatnonzero(np.isnan(parsed) & ~_is_missing(series))
    return parsed, (int(bad[0]) if bad.size else None)


def _is_numeric_column(series: pd.Series, source: str) -> bool:
    """Decide if a reference column is numeric; reject numeric columns with typos."""
    if pd.api.types.is_bool_dtype(series):
        return False
    if pd.api.types.is_numeric_dtype(series):
        return True
    present = series[~_is_missing(series)]
    if present.empty:
        return False
    parsed, first_bad = _parse_numeric(series)
    n_numeric = int(np.sum(~np.isnan(parsed)))
    if first_bad is None:
        return True
    if n_numeric / len(present) >= NUMERIC_SHARE:
        raise DataError(
            f"non-numeric value {series.iloc[first_bad]!r} in numeric column "
            f"{series.name!r} (file {source}, {describe_row(first_bad)}; "
            f"{n_numeric} of {len(present)} values are numbers). "
            "Fix or remove the value, or leave the cell empty and use impute='mean'."
        )
    return False


@dataclass(frozen=True)
class Preprocessing:
    """A fitted, JSON-serialisable input encoding.

    Parameters
    ----------
    kind : {"tabular", "image"}
        What the model consumes.
    label_column : str
        Name of the label column in tables.
    class_names : tuple of str
        Label values as strings, in class-index order.
    feature_columns : tuple of str
        Raw input columns a device must supply, in reference-file order
        (tabular); ``()`` for images. Arrays passed to ``transform_features``
        use this column order.
    numeric_columns : tuple of str
        Feature columns that are standardised, in encoding order.
    means, scales : tuple of float
        Per numeric column: reference mean and population standard deviation
        (``ddof=0``; 1.0 where it is 0).
    categories : dict of str to tuple of str
        Categorical column -> categories; one-hot in this order after the
        numeric block.
    impute : {"none", "mean"}
        ``"none"`` rejects missing values; ``"mean"`` fills them with
        ``fill_values``.
    fill_values : dict of str to float or str
        Numeric mean or categorical mode per column (used with ``impute="mean"``).
    image_shape : tuple of int or None
        ``(C, H, W)`` for images.
    pixel_scale : float
        Raw image values are divided by this.
    series_shape : tuple of int or None
        ``(channels, steps)`` the model takes, for time series.
    channel_means, channel_scales : tuple of float
        Per channel of a time series: the reference mean and population
        standard deviation (1.0 where it is 0) over every recorded step.
    """

    kind: str
    label_column: str
    class_names: tuple[str, ...]
    feature_columns: tuple[str, ...] = ()
    numeric_columns: tuple[str, ...] = ()
    means: tuple[float, ...] = ()
    scales: tuple[float, ...] = ()
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    impute: str = "none"
    fill_values: dict[str, float | str] = field(default_factory=dict)
    image_shape: tuple[int, ...] | None = None
    pixel_scale: float = 1.0
    series_shape: tuple[int, ...] | None = None
    channel_means: tuple[float, ...] = ()
    channel_scales: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        """Validate every field; report all problems at once."""
        problems = []
        if self.kind not in KINDS:
            problems.append(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.impute not in IMPUTE_MODES:
            problems.append(
                f"impute must be one of {IMPUTE_MODES}, got {self.impute!r}"
            )
        if len(self.class_names) < 1:
            problems.append("class_names must not be empty")
        if not len(self.means) == len(self.scales) == len(self.numeric_columns):
            problems.append(
                f"means ({len(self.means)}), scales ({len(self.scales)}) and "
                f"numeric_columns ({len(self.numeric_columns)}) must have one "
                "entry each per numeric column"
            )
        if self.kind == "image":
            shape = self.image_shape
            if shape is None or len(shape) != 3 or min(shape) < 1:
                problems.append(
                    f"image_shape must be (C, H, W) of positive ints, got {shape!r}"
                )
            if not self.pixel_scale > 0:
                problems.append(f"pixel_scale must be > 0, got {self.pixel_scale}")
        elif self.kind == "series":
            shape = self.series_shape
            if shape is None or len(shape) != 2 or min(shape) < 1:
                problems.append(
                    f"series_shape must be (channels, steps) of positive ints, "
                    f"got {shape!r}"
                )
            elif not len(self.channel_means) == len(self.channel_scales) == shape[0]:
                problems.append(
                    f"channel_means ({len(self.channel_means)}) and channel_scales "
                    f"({len(self.channel_scales)}) need one entry per channel "
                    f"({shape[0]})"
                )
            elif min(self.channel_scales) <= 0:
                problems.append(
                    f"channel_scales must be > 0, got {self.channel_scales}"
                )
        else:
            expected = set(self.numeric_columns) | set(self.categories)
            if set(self.feature_columns) != expected or len(expected) != len(
                self.feature_columns
            ):
                problems.append(
                    "feature_columns must be exactly the numeric and categorical "
                    f"columns, got {list(self.feature_columns)}"
                )
        if problems:
            raise DataError("invalid preprocessing: " + "; ".join(problems))

    # ------------------------------------------------------------ shape
    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one encoded example (no batch axis)."""
        if self.kind == "image":
            assert self.image_shape is not None
            return tuple(self.image_shape)
        if self.kind == "series":
            assert self.series_shape is not None
            return tuple(self.series_shape)
        n = len(self.numeric_columns) + sum(len(c) for c in self.categories.values())
        return (n,)

    @property
    def num_classes(self) -> int:
        """Number of classes (model outputs)."""
        return len(self.class_names)

    # ------------------------------------------------------------ features
    def transform_features(
        self, data: pd.DataFrame | np.ndarray, *, source: str = "input"
    ) -> np.ndarray:
        """Encode raw features into model inputs with the device runtime's encoder.

        ``data`` and the result are as for
        :func:`fedge.edge_export.runtime.encoding.transform_features`: a
        DataFrame, a column mapping or an array (images and series also as
        arrays or lists of series); float32 of shape ``(n, *input_shape)``.

        Raises
        ------
        DataError
            Missing columns, non-numeric or missing values (without imputation),
            or images or series of the wrong size.
        """
        with _as_data_error():
            return transform_features(self.to_dict(), data, source=source)

    # ------------------------------------------------------------ labels
    def encode_labels(
        self, labels: pd.Series | np.ndarray, *, source: str = "input"
    ) -> np.ndarray:
        """Map label values to class indices.

        Values are compared as strings, so ``3``, ``3.0`` and ``"3"`` match.
        When no class name is numeric (e.g. ``("malignant", "benign")``),
        integer class indices are accepted too.

        Raises
        ------
        DataError
            A missing label or a value that is not a known class.
        """
        values = pd.Series(np.asarray(labels, dtype=object).ravel())
        _refuse_missing_labels(values, self.label_column, source)
        index = {name: i for i, name in enumerate(self.class_names)}
        names_numeric = any(_looks_numeric(n) for n in self.class_names)
        out = np.empty(len(values), dtype=np.int64)
        for row, value in enumerate(values):
            key = value_string(value)
            i = index.get(key)
            if i is None and not names_numeric and _looks_numeric(key):
                number = float(key)
                if number.is_integer() and 0 <= number < len(self.class_names):
                    i = int(number)
            if i is None:
                raise DataError(
                    f"unknown label {value!r} in column {self.label_column!r} "
                    f"(file {source}, {describe_row(row)}); known classes: "
                    f"{list(self.class_names)}"
                )
            out[row] = i
        return out

    # ------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """Return a plain-JSON dict (lists, str, float, int, None).

        The time-series keys appear only for ``kind="series"``, so tables' and
        images' metadata stay as they were before time series existed.
        """
        out = {
            "kind": self.kind,
            "label_column": self.label_column,
            "class_names": list(self.class_names),
            "feature_columns": list(self.feature_columns),
            "numeric_columns": list(self.numeric_columns),
            "means": [float(m) for m in self.means],
            "scales": [float(s) for s in self.scales],
            "categories": {k: list(v) for k, v in self.categories.items()},
            "impute": self.impute,
            "fill_values": {
                k: (v if isinstance(v, str) else float(v))
                for k, v in self.fill_values.items()
            },
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "pixel_scale": float(self.pixel_scale),
        }
        if self.kind == "series":
            assert self.series_shape is not None
            out["series_shape"] = list(self.series_shape)
            out["channel_means"] = [float(m) for m in self.channel_means]
            out["channel_scales"] = [float(s) for s in self.channel_scales]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        """Rebuild from :meth:`to_dict` output; unknown or missing keys raise."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise DataError(
                f"unknown preprocessing key(s) {unknown}; expected {sorted(known)}"
            )
        try:
            return cls(
                kind=d["kind"],
                label_column=d["label_column"],
                class_names=tuple(d["class_names"]),
                feature_columns=tuple(d.get("feature_columns", ())),
                numeric_columns=tuple(d.get("numeric_columns", ())),
                means=tuple(float(m) for m in d.get("means", ())),
                scales=tuple(float(s) for s in d.get("scales", ())),
                categories={k: tuple(v) for k, v in d.get("categories", {}).items()},
                impute=d.get("impute", "none"),
                fill_values=dict(d.get("fill_values", {})),
                image_shape=(
                    None
                    if d.get("image_shape") is None
                    else tuple(int(s) for s in d["image_shape"])
                ),
                pixel_scale=float(d.get("pixel_scale", 1.0)),
                series_shape=(
                    None
                    if d.get("series_shape") is None
                    else tuple(int(s) for s in d["series_shape"])
                ),
                channel_means=tuple(float(m) for m in d.get("channel_means", ())),
                channel_scales=tuple(float(s) for s in d.get("channel_scales", ())),
            )
        except KeyError as e:
            raise DataError(f"preprocessing dict lacks required key {e}") from e

    def to_json(self) -> str:
        """Serialise to a JSON string."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> Preprocessing:
        """Parse :meth:`to_json` output."""
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise DataError(f"preprocessing is not valid JSON: {e}") from e
        if not isinstance(d, dict):
            raise DataError(
                f"preprocessing JSON must be an object, got {type(d).__name__}"
            )
        return cls.from_dict(d)


def series_array(
    data: np.ndarray | list[np.ndarray], *, channels: int, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """Stack time series into ``(n, channels, steps)`` float64 and their lengths.

    The runtime encoder's :func:`~fedge.edge_export.runtime.encoding.series_array`,
    raising :class:`DataError`.
    """
    with _as_data_error():
        return encoding.series_array(data, channels=channels, source=source)


def fit_series(
    data: np.ndarray | list[np.ndarray],
    *,
    class_names: tuple[str, ...],
    label_column: str,
    source: str,
) -> Preprocessing:
    """Fit a time-series encoding: per-channel mean and scale, the longest length.

    Statistics use every recorded step of every series (padding excluded);
    ``steps`` is the longest reference series, so nothing recorded there is cut.
    """
    first = data[0] if isinstance(data, list | tuple) else np.asarray(data)[0]
    channels = int(np.asarray(first).shape[0])
    array, lengths = series_array(data, channels=channels, source=source)
    inside = np.arange(array.shape[2])[None, :] < lengths[:, None]
    values = array.transpose(1, 0, 2)[:, inside]  # (channels, recorded steps)
    means = values.mean(axis=1)
    stds = values.std(axis=1)
    return Preprocessing(
        kind="series",
        label_column=label_column,
        class_names=class_names,
        series_shape=(channels, int(lengths.max())),
        channel_means=tuple(float(m) for m in means),
        channel_scales=tuple(float(s) if s > 0 else 1.0 for s in stds),
    )


def _looks_numeric(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


def _refuse_missing_labels(labels: pd.Series, label_column: str, source: str) -> None:
    missing = _is_missing(labels)
    if missing.any():
        first = int(np.flatnonzero(missing)[0])
        raise DataError(
            f"missing label in column {label_column!r} (file {source}, "
            f"{describe_row(first)}); labels cannot be imputed"
        )


def _class_names(labels: pd.Series, label_column: str, source: str) -> tuple[str, ...]:
    """Sorted unique labels: numerically if all are numbers, else as strings."""
    _refuse_missing_labels(labels, label_column, source)
    names = {value_string(v) for v in labels.to_numpy()}
    if all(_looks_numeric(n) for n in names):
        ordered = sorted(names, key=float)
    else:
        ordered = sorted(names)
    if len(ordered) < 2:
        raise DataError(
            f"label column {label_column!r} in {source} has only one class "
            f"({ordered}); a classifier needs at least two"
        )
    return tuple(ordered)


def fit_preprocessing(
    frame: pd.DataFrame,
    *,
    label_column: str,
    impute: str = "none",
    source: str = "data",
) -> Preprocessing:
    """Fit an encoding on reference data.

    Numeric columns are standardised; bool, string and category columns are
    one-hot encoded with categories sorted as strings. An object column whose
    values are at least 90% numbers is taken as a numeric column with typos and
    rejected, naming the first bad value and its row. If ``frame.attrs`` holds
    ``IMAGE_SHAPE_ATTR`` (set by ``read_table`` for image ``.npz`` files), the
    non-label columns are flat pixels and an image encoding is fitted, with
    ``pixel_scale = max|x|`` (1.0 if that is 0). With ``SERIES_SHAPE_ATTR``
    (``(channels, steps)``, 3-D ``.npz`` files) a time-series encoding is fitted
    (:func:`fit_series`).

    Parameters
    ----------
    frame : DataFrame
        Reference data including the label column.
    label_column : str
        Column holding the class labels.
    impute : {"none", "mean"}
        ``"none"`` rejects missing feature values; ``"mean"`` fills numeric
        columns with their mean and categorical ones with their mode.
    source : str
        File or description named in error messages.

    Returns
    -------
    Preprocessing

    Raises
    ------
    DataError
        Missing label column, an empty column, a non-numeric value in a numeric
        column, a missing value with ``impute="none"``, or fewer than two classes.
    """
    if impute not in IMPUTE_MODES:
        raise DataError(f"impute must be one of {IMPUTE_MODES}, got {impute!r}")
    frame = frame.rename(columns=str)
    columns = list(frame.columns)
    if label_column not in frame.columns:
        raise DataError(
            f"label column {label_column!r} not found in {source}; "
            f"columns found: {columns}"
        )
    if len(frame) == 0:
        raise DataError(f"{source} has no data rows")
    class_names = _class_names(frame[label_column], label_column, source)
    features = frame.drop(columns=[label_column])

    series_shape = frame.attrs.get(SERIES_SHAPE_ATTR)
    if series_shape is not None:
        flat = features.to_numpy(dtype=np.float64)
        return fit_series(
            flat.reshape(len(flat), *series_shape),
            class_names=class_names,
            label_column=label_column,
            source=source,
        )
    image_shape = frame.attrs.get(IMAGE_SHAPE_ATTR)
    if image_shape is not None:
        pixels = features.to_numpy(dtype=np.float64)
        finite = pixels[np.isfinite(pixels)]
        peak = float(np.max(np.abs(finite))) if finite.size else 0.0
        prep = Preprocessing(
            kind="image",
            label_column=label_column,
            class_names=class_names,
            image_shape=tuple(int(s) for s in image_shape),
            pixel_scale=peak if peak > 0 else 1.0,
        )
        prep.transform_features(pixels, source=source)  # rejects NaN pixels
        return prep

    numeric, means, scales = [], [], []
    categories: dict[str, tuple[str, ...]] = {}
    fill_values: dict[str, float | str] = {}
    for col in features.columns:
        series = features[col]
        name = str(col)
        missing = _is_missing(series)
        if missing.all():
            raise DataError(
                f"column {name!r} in {source} is entirely empty; drop it or fill it in"
            )
        if missing.any() and impute == "none":
            first = int(np.flatnonzero(missing)[0])
            raise DataError(
                f"missing value in column {name!r} (file {source}, {describe_row(first)}; "
                f"{int(missing.sum())} missing in total). Fill it in, drop the row, "
                "or set impute = 'mean'."
            )
        if _is_numeric_column(series, source):
            values, _ = _parse_numeric(series)
            present = values[~np.isnan(values)]
            if not np.all(np.isfinite(present)):
                first = int(np.flatnonzero(np.isinf(values))[0])
                raise DataError(
                    f"infinite value in numeric column {name!r} "
                    f"(file {source}, {describe_row(first)})"
                )
            mean = float(present.mean())
            std = float(present.std())
            numeric.append(name)
            means.append(mean)
            scales.append(std if std > 0 else 1.0)
            fill_values[name] = mean
        else:
            strings = pd.Series(
                [value_string(v) for v in series[~missing].to_numpy()], dtype=object
            )
            categories[name] = tuple(sorted(strings.unique()))
            # Mode; ties go to the first category in sorted order (deterministic).
            counts = strings.value_counts()
            fill_values[name] = str(min(counts[counts == counts.max()].index))
    if not numeric and not categories:
        raise DataError(
            f"{source} has no feature columns besides the label {label_column!r}"
        )
    return Preprocessing(
        kind="tabular",
        label_column=label_column,
        class_names=class_names,
        feature_columns=tuple(str(c) for c in features.columns),
        numeric_columns=tuple(numeric),
        means=tuple(means),
        scales=tuple(scales),
        categories=categories,
        impute=impute,
        fill_values=fill_values,
    )

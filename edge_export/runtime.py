"""Run an exported fedge model on a device: ONNX Runtime and NumPy, nothing else.

This file stands alone on purpose: a device copies it (or installs fedge with
``pip install -r requirements-edge.txt``) and needs neither torch nor the rest
of fedge. It therefore re-implements, in NumPy, the input encoding that
``fedge.shared.preprocessing.Preprocessing.transform_features`` applies during
training, reading the encoding from the model's own metadata; a test checks
that both give identical arrays. pandas is imported only when the caller
hands over a DataFrame or asks to read CSV/Parquet and it is installed.

Examples
--------
A device loop, once the model has been exported with ``fedge export``::

    from fedge.edge_export.runtime import EdgeModel

    model = EdgeModel.load("runs/demo/model.int8.onnx")
    prediction = model.predict(raw_rows)  # array, DataFrame or column dict
    prediction.labels, prediction.probabilities
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------ metadata
# Keys under ``ModelProto.metadata_props``; every value is a string (JSON for
# anything structured). edge_export.metadata writes them, this module reads them.
METADATA_FORMAT = "fedge-onnx/1"
KEY_FORMAT = "fedge.format"
KEY_MODEL_NAME = "fedge.model-name"
KEY_SPEC = "fedge.model-spec"
KEY_INPUT = "fedge.input"
KEY_OUTPUT = "fedge.output"
KEY_PREPROCESSING = "fedge.preprocessing"
KEY_CLASS_LABELS = "fedge.class-labels"
KEY_PROVENANCE = "fedge.provenance"
KEY_PRIVACY = "fedge.privacy"
KEY_QUANTIZATION = "fedge.quantization"
# Only for a user's own model (``MODULE:CALLABLE``): which code it is.
KEY_MODEL_IDENTITY = "fedge.model-identity"
REQUIRED_KEYS = (
    KEY_FORMAT,
    KEY_MODEL_NAME,
    KEY_SPEC,
    KEY_INPUT,
    KEY_OUTPUT,
    KEY_PREPROCESSING,
    KEY_CLASS_LABELS,
    KEY_PROVENANCE,
    KEY_PRIVACY,
    KEY_QUANTIZATION,
)
# This file is copied alone to devices, so it cannot import shared.run_folder,
# which owns these names; tests/test_run_folder_contract.py checks they agree.
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"  # the manifest's signature (a Sigstore bundle)
# The privacy summary's largest per-node ε, and the name models exported before
# it was unified used for it (read, so those models keep working).
PRIVACY_EPSILON_MAX = "epsilon-max"
LEGACY_PRIVACY_EPSILON_MAX = "max-epsilon"
# Chunk size for hashing: large enough to be fast, small enough for a device.
_HASH_CHUNK_BYTES = 1 << 20


class EdgeError(ValueError):
    """Base class of the runtime's errors (a ValueError, like fedge's own).

    The runtime cannot import ``fedge.shared.errors`` (it must run without fedge),
    so it has its own small hierarchy.
    """


class ModelFileError(EdgeError):
    """The model file is missing, not ONNX, lacks fedge metadata or fails its hash."""


class InputError(EdgeError):
    """Input data does not match what the model expects."""


class SignatureError(ModelFileError):
    """The manifest's signature is missing, unreadable or not the trusted key's."""


@dataclass(frozen=True)
class EdgeMetadata:
    """What the exporter stored in the ONNX file, parsed.

    Parameters
    ----------
    model_name : str
        Registry architecture (``"mlp"`` or ``"cnn"``).
    spec : dict
        The ``ModelSpec`` as a dict.
    input_name, input_dtype : str
        Graph input to feed, and its element type (``"float32"``).
    input_shape : tuple
        Shape with ``"batch"`` for the dynamic batch axis.
    output_name : str
        Graph output holding the logits.
    preprocessing : dict
        ``Preprocessing.to_dict()``: how raw inputs are encoded.
    class_labels : tuple of str
        Class names in logit order.
    provenance, privacy, quantization : dict
        Training run facts, DP guarantees, and how the weights were quantised.
    model_identity : dict or None
        A user's own model: its reference, the SHA-256 of its source file and
        its package version. None for fedge's built-in models.
    """

    model_name: str
    spec: dict[str, Any]
    input_name: str
    input_shape: tuple[Any, ...]
    input_dtype: str
    output_name: str
    preprocessing: dict[str, Any]
    class_labels: tuple[str, ...]
    provenance: dict[str, Any]
    privacy: dict[str, Any]
    quantization: dict[str, Any]
    model_identity: dict[str, Any] | None = None

    @classmethod
    def from_props(cls, props: Mapping[str, str], *, source: str) -> EdgeMetadata:
        """Parse ``metadata_props`` as a string mapping.

        Raises
        ------
        ModelFileError
            The fedge keys are missing, of another format version, or not JSON.
        """
        missing = [k for k in REQUIRED_KEYS if k not in props]
        if len(missing) == len(REQUIRED_KEYS):
            raise ModelFileError(
                f"{source} is an ONNX model without fedge metadata (expected "
                f"metadata_props keys {list(REQUIRED_KEYS)}, found "
                f"{sorted(props)}); export it with `fedge export RUN_DIR`"
            )
        if missing:
            raise ModelFileError(
                f"{source} has incomplete fedge metadata: missing {missing}"
            )
        if props[KEY_FORMAT] != METADATA_FORMAT:
            raise ModelFileError(
                f"{source} has fedge metadata format {props[KEY_FORMAT]!r}, "
                f"this runtime reads {METADATA_FORMAT!r}; update fedge's runtime"
            )
        parsed: dict[str, Any] = {}
        optional = [KEY_MODEL_IDENTITY] if KEY_MODEL_IDENTITY in props else []
        for key in (*REQUIRED_KEYS[2:], *optional):
            try:
                parsed[key] = json.loads(props[key])
            except json.JSONDecodeError as e:
                raise ModelFileError(
                    f"{source}: metadata {key!r} is not valid JSON ({e})"
                ) from e
        model_input, model_output = parsed[KEY_INPUT], parsed[KEY_OUTPUT]
        return cls(
            model_name=props[KEY_MODEL_NAME],
            spec=parsed[KEY_SPEC],
            input_name=model_input["name"],
            input_shape=tuple(model_input["shape"]),
            input_dtype=model_input["dtype"],
            output_name=model_output["name"],
            preprocessing=parsed[KEY_PREPROCESSING],
            class_labels=tuple(parsed[KEY_CLASS_LABELS]),
            provenance=parsed[KEY_PROVENANCE],
            privacy=_current_privacy_names(parsed[KEY_PRIVACY]),
            quantization=parsed[KEY_QUANTIZATION],
            model_identity=parsed.get(KEY_MODEL_IDENTITY),
        )


def _current_privacy_names(privacy: dict[str, Any]) -> dict[str, Any]:
    """Return the privacy summary with today's names (an old model's ε renamed)."""
    if LEGACY_PRIVACY_EPSILON_MAX not in privacy:
        return privacy
    renamed = dict(privacy)
    legacy = renamed.pop(LEGACY_PRIVACY_EPSILON_MAX)
    renamed.setdefault(PRIVACY_EPSILON_MAX, legacy)
    return renamed


@dataclass(frozen=True)
class Prediction:
    """Predictions for a batch.

    Attributes
    ----------
    labels : ndarray of str, shape (n,)
        Predicted class names.
    indices : ndarray of int64, shape (n,)
        Predicted class indices.
    probabilities : ndarray of float32, shape (n, k)
        Softmax of the logits; columns follow ``class_labels``.
    class_labels : tuple of str
    """

    labels: np.ndarray
    indices: np.ndarray
    probabilities: np.ndarray
    class_labels: tuple[str, ...]


@dataclass(frozen=True)
class StreamPrediction:
    """One prediction per window of a long recording.

    Attributes
    ----------
    starts : ndarray of int64, shape (n,)
        Index of each window's first step in the recording.
    timestamps : ndarray or None, shape (n,)
        The recording's timestamp at each window's first step, when it had any.
    prediction : Prediction
        Labels and probabilities, one row per window.
    """

    starts: np.ndarray
    timestamps: np.ndarray | None
    prediction: Prediction


# ------------------------------------------------------------------ hashing
def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_signature(
    manifest_path: str | os.PathLike[str], public_key: str | os.PathLike[str]
) -> None:
    """Check ``manifest.sig`` beside the manifest against a trusted public key.

    The signature covers the manifest's bytes, and the manifest holds the
    SHA-256 of every exported file: a file that still matches a manifest whose
    signature verifies is the file the key's holder exported. Hashes alone only
    detect corruption (whoever rewrites a file can rewrite its hash too); the
    signature detects tampering. OpenSSF's ``model-signing`` library verifies
    (elliptic-curve key mode, offline); it is imported only here, so a device
    that checks no signature needs neither it nor its dependencies.

    Raises
    ------
    SignatureError
        No signature, an unreadable key, or a signature that does not verify.
    """
    manifest_path, public_key = Path(manifest_path), Path(public_key)
    signature = manifest_path.with_name(SIGNATURE_FILE)
    if not manifest_path.is_file():
        raise SignatureError(
            f"{manifest_path} not found: a signed export has one beside the model"
        )
    if not signature.is_file():
        raise SignatureError(
            f"{manifest_path.parent}: no {SIGNATURE_FILE}, the export is unsigned; "
            f"refusing it because a public key ({public_key}) was given"
        )
    if not public_key.is_file():
        raise SignatureError(f"public key {public_key} not found")
    try:
        from model_signing import verifying
    except ImportError as e:
        raise SignatureError(
            "checking a signature needs the model-signing package "
            "(pip install -r requirements-edge.txt)"
        ) from e
    try:
        config = verifying.Config()  # type: ignore[no-untyped-call]
        config.use_elliptic_key_verifier(public_key=public_key).verify(
            manifest_path, signature
        )
    except Exception as e:  # model-signing raises ValueError and its own types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        reason = (
            "the manifest was changed after it was signed"
            if first.startswith("Signature mismatch")
            else f"not signed by {public_key} ({first[:200]})"
        )
        raise SignatureError(
            f"{signature} does not verify: {reason}; refusing this export"
        ) from e


def _check_manifest_hash(path: Path, *, required: bool = False) -> None:
    """Refuse a model whose bytes differ from the manifest beside it, if any.

    ``required``: the manifest (signature checked) must exist and list the model.
    """
    manifest_path = path.parent / MANIFEST_FILE
    if not manifest_path.is_file() and not required:
        return
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        entry = manifest["artefacts"].get(path.name)
    except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
        raise ModelFileError(
            f"{manifest_path} is not a fedge manifest ({e}); re-export with "
            "`fedge export RUN_DIR` or load with verify=False"
        ) from e
    if entry is None:
        if required:
            raise SignatureError(
                f"{manifest_path} does not list {path.name}: the signature does "
                "not cover this file; refusing it"
            )
        return
    actual = sha256_file(path)
    if actual != entry.get("sha256"):
        raise ModelFileError(
            f"{path} does not match {manifest_path}: sha256 {actual}, expected "
            f"{entry.get('sha256')}; the file was changed after export. Refusing "
            "to load it; re-export or restore the original"
        )


# ------------------------------------------------------------------ encoding
# A NumPy port of shared.preprocessing.Preprocessing.transform_features. The
# two must agree bit for bit; tests/edge_export/test_runtime.py checks it.
def _row(position: int) -> str:
    return f"row {position + 1}"


def _value_str(value: Any) -> str:
    """Return the string form used to match categories (``3``, ``3.0`` and ``"3"`` agree)."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, float | np.floating) and math.isfinite(value):
        if float(value).is_integer():
            return str(int(value))
        return repr(float(value))
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


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


def _parse_number(value: Any) -> float | None:
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
            number = _parse_number(value)
            if number is None:
                raise InputError(
                    f"non-numeric value {value!r} in numeric column {column!r} "
                    f"({source}, {_row(i)}); expected a number"
                )
            parsed[i] = number
    parsed = _fill_missing(parsed, missing, column, prep, source)
    if not np.all(np.isfinite(parsed)):
        first = int(np.flatnonzero(~np.isfinite(parsed))[0])
        raise InputError(
            f"infinite value in numeric column {column!r} ({source}, {_row(first)}); "
            "expected a finite number"
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
            f"missing value (NaN/empty) in column {column!r} ({source}, "
            f"{_row(first)}; {int(missing.sum())} missing in total); this model "
            "was trained with impute='none', so every value is required"
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
    strings = np.array([_value_str(v) for v in values], dtype=object)
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
            _row(unknown[0]),
        )
    return out


def _is_dataframe(data: Any) -> bool:
    # Duck-typed so pandas is never imported just to ask.
    return type(data).__name__ == "DataFrame" and hasattr(data, "columns")


def _frame_columns(frame: Any) -> dict[str, np.ndarray]:
    """DataFrame -> column name -> NumPy array (missing cells as NaN or None)."""
    columns: dict[str, np.ndarray] = {}
    for name in frame.columns:
        series = frame[name]
        if isinstance(series, type(frame)):  # duplicated column name
            raise InputError(f"column {str(name)!r} appears more than once")
        kind = getattr(series.dtype, "kind", "O")
        if kind in "iuf" and series.isna().any():
            columns[str(name)] = series.to_numpy(dtype=np.float64, na_value=np.nan)
        elif kind in "iufb":
            columns[str(name)] = series.to_numpy()
        else:
            array = series.to_numpy(dtype=object)
            array[series.isna().to_numpy()] = None
            columns[str(name)] = array
    return columns


def _transform_tabular(prep: Mapping[str, Any], data: Any, source: str) -> np.ndarray:
    feature_columns: list[str] = list(prep["feature_columns"])
    categories: dict[str, list[str]] = dict(prep.get("categories", {}))
    if _is_dataframe(data):
        columns = _frame_columns(data)
    elif isinstance(data, Mapping):
        columns = {str(k): np.asarray(v) for k, v in data.items()}
    else:
        array = np.asarray(data)
        if categories:
            raise InputError(
                f"{source}: an array cannot supply categorical columns "
                f"{list(categories)}; pass a DataFrame or a dict with columns "
                f"{feature_columns}"
            )
        if array.ndim != 2 or array.shape[1] != len(feature_columns):
            raise InputError(
                f"{source}: expected an array of shape (n, {len(feature_columns)}) "
                f"with columns {feature_columns}, got shape {tuple(array.shape)}"
            )
        columns = {c: array[:, j] for j, c in enumerate(feature_columns)}
    missing = [c for c in feature_columns if c not in columns]
    if missing:
        raise InputError(
            f"{source} is missing feature column(s) {missing}; expected "
            f"{feature_columns}, got {list(columns)}"
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


def _transform_images(prep: Mapping[str, Any], data: Any, source: str) -> np.ndarray:
    c, h, w = (int(s) for s in prep["image_shape"])
    if _is_dataframe(data) or isinstance(data, Mapping):
        columns = _frame_columns(data) if _is_dataframe(data) else dict(data)
        columns.pop(prep["label_column"], None)
        try:
            array = np.column_stack(
                [np.asarray(v, dtype=np.float64) for v in columns.values()]
            )
        except (TypeError, ValueError) as e:
            raise InputError(
                f"image pixels must be numeric ({source}); expected numbers, got "
                f"a non-numeric value: {e}"
            ) from e
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
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(
            f"image pixels must be numeric, got dtype {array.dtype} ({source}); "
            "expected integers or floats"
        )
    array = array.astype(np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        first = int(np.flatnonzero(bad.reshape(len(array), -1).any(axis=1))[0])
        raise InputError(
            f"missing (NaN) or infinite pixel value in image {first + 1} ({source}); "
            "expected finite numbers, images cannot be imputed"
        )
    return (array / float(prep["pixel_scale"])).astype(np.float32)


def _series_array(
    data: Any, channels: int, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """Port of ``fedge.shared.preprocessing.series_array``: stack, find each length."""
    if isinstance(data, list | tuple):
        if not data:
            raise InputError(f"{source}: no time series given; expected at least one")
        parts = [np.asarray(s) for s in data]
        if any(p.ndim != 2 or p.shape[0] != channels for p in parts):
            shapes = sorted({tuple(p.shape) for p in parts})[:3]
            raise InputError(
                f"{source}: each series must have shape ({channels}, steps), got "
                f"shapes {shapes}"
            )
        array = np.full((len(parts), channels, max(p.shape[1] for p in parts)), np.nan)
        for i, p in enumerate(parts):
            array[i, :, : p.shape[1]] = p
    else:
        array = np.asarray(data)
    if array.ndim != 3 or array.shape[1] != channels:
        raise InputError(
            f"{source}: expected time series of shape (n, {channels}, steps), got "
            f"an array of shape {tuple(array.shape)}"
        )
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(
            f"{source}: time series values must be numeric, got dtype {array.dtype}"
        )
    array = array.astype(np.float64)
    recorded = ~np.isnan(array).all(axis=1)
    lengths = np.where(
        recorded.any(axis=1), array.shape[2] - np.argmax(recorded[:, ::-1], axis=1), 0
    )
    inside = np.arange(array.shape[2])[None, :] < lengths[:, None]
    bad = (inside & ~np.isfinite(array).all(axis=1)) | (lengths == 0)[:, None]
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise InputError(
            f"{source}: series {row + 1} has a missing or non-finite value inside "
            "it, or no recorded step; expected finite numbers (only trailing "
            "all-NaN steps count as padding)"
        )
    return array, lengths


def _transform_series(prep: Mapping[str, Any], data: Any, source: str) -> np.ndarray:
    channels, steps = (int(s) for s in prep["series_shape"])
    if _is_dataframe(data) or isinstance(data, Mapping):
        columns = _frame_columns(data) if _is_dataframe(data) else dict(data)
        columns.pop(prep["label_column"], None)
        flat = np.column_stack(
            [np.asarray(v, dtype=np.float64) for v in columns.values()]
        )
        if flat.shape[1] % channels:
            raise InputError(
                f"{source}: {flat.shape[1]} values per row do not split into "
                f"{channels} channels of equal length"
            )
        data = flat.reshape(len(flat), channels, -1)
    array, lengths = _series_array(data, channels, source)
    means = np.asarray(prep["channel_means"], dtype=np.float64)[:, None]
    scales = np.asarray(prep["channel_scales"], dtype=np.float64)[:, None]
    array = (array - means) / scales
    out = np.zeros((len(array), channels, steps), dtype=np.float32)
    keep = min(array.shape[2], steps)
    inside = np.arange(keep)[None, None, :] < lengths[:, None, None]
    out[:, :, :keep] = np.where(inside, array[:, :, :keep], 0.0)
    return out


def transform_features(
    preprocessing: Mapping[str, Any], data: Any, *, source: str = "input"
) -> np.ndarray:
    """Encode raw inputs exactly as ``Preprocessing.transform_features`` does.

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
        ones) or a list of ``(C, steps_i)`` arrays; cut or zero-padded to the
        model's length after per-channel standardisation.
    source : str
        Named in error messages.

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


# ------------------------------------------------------------------ input files
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


# Column names a recording CSV's time column may have; every other column is a channel.
TIMESTAMP_COLUMNS = ("timestamp", "time")


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
            [np.nan if v is None else _parse_number(v) for v in values], dtype=object
        )
        bad = next((i for i, v in enumerate(parsed) if v is None), None)
        if bad is not None:
            raise InputError(
                f"{path}: non-numeric value {values[bad]!r} in channel {name!r} "
                f"({_row(bad)}); expected a number"
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
            f"cannot read CSV file {path}: {_row(bad)} has {len(body[bad])} fields, "
            f"expected {len(header)} as in the header"
        )
    columns = {}
    for j, name in enumerate(header):
        values = np.array([r[j] if r[j] != "" else None for r in body], dtype=object)
        columns[name] = values
    return columns


# ------------------------------------------------------------------ the model
def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probabilities: np.ndarray = (exp / exp.sum(axis=1, keepdims=True)).astype(
        np.float32
    )
    return probabilities


def session_options(threads: int | None = 1) -> ort.SessionOptions:
    """ONNX Runtime options for small models on a CPU.

    Full graph optimisation (fusions, NCHWc layouts) and sequential execution:
    these models are chains of small ops, where inter-op parallelism only adds
    scheduling overhead. ``threads=None`` lets ONNX Runtime pick.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


class EdgeModel:
    """An exported fedge model with its input encoding, ready to predict.

    Use :meth:`load`; the constructor takes an open session.
    """

    def __init__(
        self, session: ort.InferenceSession, metadata: EdgeMetadata, path: Path
    ):
        self.session = session
        self.metadata = metadata
        self.path = path
        # "unsigned" unless load() checked the signature with a public key.
        self.signature = "unsigned"

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        threads: int | None = 1,
        verify: bool = True,
        public_key: str | os.PathLike[str] | None = None,
    ) -> EdgeModel:
        """Open an ONNX file written by ``fedge export``.

        Parameters
        ----------
        path : path-like
            ``model.onnx`` or ``model.int8.onnx``.
        threads : int or None, default 1
            ONNX Runtime intra-op threads; ``None`` lets it decide.
        verify : bool, default True
            If a ``manifest.json`` lies beside the model and lists it, refuse
            the model unless its SHA-256 matches.
        public_key : path-like, optional
            The exporter's public key (PEM). Then the manifest beside the
            model must carry a valid signature by that key and list the
            model with its hash (:func:`verify_signature`). Without it the
            signature is not checked: ``signature`` says ``"unsigned"``.

        Raises
        ------
        ModelFileError
            Missing file, not ONNX, no fedge metadata, or a hash mismatch.
        SignatureError
            ``public_key`` given and the signature missing or wrong.
        """
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"model file not found: {path}")
        signature = "unsigned"
        if public_key is not None:
            verify_signature(path.parent / MANIFEST_FILE, public_key)
            _check_manifest_hash(path, required=True)
            signature = f"verified with {public_key}"
        elif verify:
            _check_manifest_hash(path)
        try:
            session = ort.InferenceSession(
                str(path), session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # ORT raises its own untyped pybind errors
            raise ModelFileError(
                f"{path} is not a valid ONNX model that ONNX Runtime can load: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else e!r}"
            ) from e
        try:
            props = session.get_modelmeta().custom_metadata_map
        except UnicodeDecodeError as e:
            raise ModelFileError(
                f"{path}: its metadata is not UTF-8 text (corrupted bytes: {e}); "
                "re-export the model or restore the file"
            ) from e
        metadata = EdgeMetadata.from_props(props, source=str(path))
        inputs = [i.name for i in session.get_inputs()]
        if metadata.input_name not in inputs:
            raise ModelFileError(
                f"{path}: metadata names input {metadata.input_name!r} but the "
                f"graph's inputs are {inputs}"
            )
        model = cls(session, metadata, path)
        model.signature = signature
        return model

    @property
    def class_labels(self) -> tuple[str, ...]:
        """Class names in logit order."""
        return self.metadata.class_labels

    def transform(self, data: Any, *, source: str = "input") -> np.ndarray:
        """Encode raw inputs (see :func:`transform_features`)."""
        return transform_features(self.metadata.preprocessing, data, source=source)

    def logits(self, encoded: np.ndarray) -> np.ndarray:
        """Run the graph on already-encoded inputs; returns ``(n, k)`` logits.

        A graph with a fixed batch size (``model.fixed.onnx``) is fed that many
        examples per call.
        """
        encoded = self._check_encoded(encoded)
        names = [self.metadata.output_name]
        batch = self.session.get_inputs()[0].shape[0]
        if not isinstance(batch, int) or batch < 1 or len(encoded) == batch:
            (out,) = self.session.run(names, {self.metadata.input_name: encoded})
            return np.asarray(out)
        if len(encoded) % batch:
            raise InputError(
                f"{self.path.name} takes batches of exactly {batch}; got "
                f"{len(encoded)} examples, not a multiple of {batch}"
            )
        outputs = [
            self.session.run(names, {self.metadata.input_name: encoded[i : i + batch]})[
                0
            ]
            for i in range(0, len(encoded), batch)
        ]
        if not outputs:
            return np.zeros((0, len(self.class_labels)), dtype=np.float32)
        return np.concatenate(outputs)

    def predict(self, data: Any, *, source: str = "input") -> Prediction:
        """Encode raw inputs, run the model, return labels and probabilities.

        Parameters
        ----------
        data : ndarray, DataFrame, mapping, or path
            Raw inputs (see :func:`transform_features`), or a ``.csv``/``.npz``/
            ``.parquet`` file path (see :func:`read_input`).
        """
        if isinstance(data, str | os.PathLike):
            source = str(data)
            data = read_input(data)
        probabilities = _softmax(self.logits(self.transform(data, source=source)))
        indices = probabilities.argmax(axis=1).astype(np.int64)
        labels = np.asarray(self.class_labels, dtype=object)[indices]
        return Prediction(labels, indices, probabilities, self.class_labels)

    def stream(
        self,
        recording: Any,
        *,
        window: int | None = None,
        stride: int | None = None,
        timestamps: np.ndarray | None = None,
    ) -> StreamPrediction:
        """Predict each sliding window of one long recording.

        Each window is encoded exactly as a separate example would be (per-
        channel standardisation, cut or padded to the model's length), so the
        result equals predicting every window on its own.

        Parameters
        ----------
        recording : ndarray of shape (channels, steps), or a path
            A ``.csv`` or ``.npz`` file (see :func:`read_recording`).
        window : int, optional
            Steps per window; default the model's own length.
        stride : int, optional
            Steps between window starts; default ``window`` (no overlap).
        timestamps : ndarray, optional
            One per step; the result reports each window's first.

        Raises
        ------
        InputError
            Not a time-series model, bad window or stride, a recording shorter
            than one window or with other channels.
        """
        source = "recording"
        if isinstance(recording, str | os.PathLike):
            source = str(recording)
            recording, timestamps = read_recording(recording)
        prep = self.metadata.preprocessing
        if prep["kind"] != "series":
            raise InputError(
                f"{self.path.name} takes {prep['kind']} inputs, not time series; "
                "predict without --window"
            )
        channels, steps = (int(s) for s in prep["series_shape"])
        window = steps if window is None else window
        stride = window if stride is None else stride
        if window < 1 or stride < 1:
            raise InputError(
                f"window and stride must be >= 1 step, got window {window}, "
                f"stride {stride}"
            )
        recording = np.asarray(recording)
        if recording.ndim != 2 or recording.shape[0] != channels:
            raise InputError(
                f"{source}: this model reads {channels} channel(s); expected a "
                f"recording of shape ({channels}, steps), got {recording.shape}"
            )
        if recording.shape[1] < window:
            raise InputError(
                f"{source} has {recording.shape[1]} steps, fewer than one window "
                f"of {window}; use a smaller --window"
            )
        views = np.lib.stride_tricks.sliding_window_view(recording, window, axis=1)
        windows = views[:, ::stride].transpose(1, 0, 2)  # (n, channels, window)
        starts = np.arange(len(windows), dtype=np.int64) * stride
        prediction = self.predict(np.ascontiguousarray(windows), source=source)
        stamps = None if timestamps is None else np.asarray(timestamps)[starts]
        return StreamPrediction(starts, stamps, prediction)

    def runner(self, batch_size: int) -> Callable[[np.ndarray], np.ndarray]:
        """Return a low-overhead callable for a fixed batch size (encoded inputs).

        Input and output buffers are allocated once and bound to the session
        (``run_with_iobinding``), so a call only copies the input in and runs
        the graph: the fastest path for batch-1 loops on a device. The returned
        array is reused by the next call; copy it to keep it.
        """
        shape = (batch_size, *self.metadata.input_shape[1:])
        in_buffer = np.zeros(shape, dtype=np.float32)
        out_buffer = np.zeros((batch_size, len(self.class_labels)), dtype=np.float32)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(
            self.metadata.input_name, ort.OrtValue.ortvalue_from_numpy(in_buffer)
        )
        binding.bind_ortvalue_output(
            self.metadata.output_name, ort.OrtValue.ortvalue_from_numpy(out_buffer)
        )
        session = self.session

        def run(encoded: np.ndarray) -> np.ndarray:
            np.copyto(in_buffer, encoded)
            session.run_with_iobinding(binding)
            return out_buffer

        return run

    def _check_encoded(self, encoded: np.ndarray) -> np.ndarray:
        expected = tuple(self.metadata.input_shape[1:])
        encoded = np.asarray(encoded)
        if encoded.ndim != len(expected) + 1 or tuple(encoded.shape[1:]) != expected:
            raise InputError(
                f"encoded input must have shape (n, {', '.join(map(str, expected))}), "
                f"got {tuple(encoded.shape)}"
            )
        return np.ascontiguousarray(encoded, dtype=np.float32)

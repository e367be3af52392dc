"""Which inputs drive the model: permutation importance and occlusion saliency.

Both methods only call the model, so they explain whatever computes the logits;
the run folder's explanations use the exported ONNX model through ONNX Runtime
(exactly what a device runs) when there is one, else the PyTorch model.

- **Tables**: permutation feature importance (Breiman 2001; Fisher, Rudin and
  Dominici 2019): the drop in held-out accuracy when one column's values are
  shuffled across examples. Importance is reported per *original* column: the
  one-hot columns of a categorical feature are shuffled together, as one block,
  so their contribution is summed back into the column a person supplied (and
  no example gets two categories at once).
- **Images, time series, any input with a shape**: occlusion saliency (Zeiler
  and Fergus 2014): the drop in the true class's probability when one patch
  (all channels of it) is set to 0, the standardised mean, patch by patch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from fedge.edge_export.runtime import session_options
from fedge.shared.errors import ModelError
from fedge.shared.preprocessing import Preprocessing

# Encoded inputs (n, *input_shape) -> logits (n, num_classes).
Predict = Callable[[np.ndarray], np.ndarray]

PERMUTATION_REPEATS = 5  # shuffles per column; their spread is reported too
OCCLUSION_BASELINE = 0.0  # standardised tables' mean; black for scaled pixels
POSITIONS_PER_AXIS = {1: 16, 2: 8}  # occluded axes -> patches along each axis
EXAMPLES_PER_CLASS = 2
_BATCH = 1024


def onnx_predictor(path: str | Path) -> Predict:
    """Return a predict function backed by one ONNX Runtime session on ``path``."""
    session = ort.InferenceSession(
        str(path), session_options(1), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name

    def predict(x: np.ndarray) -> np.ndarray:
        outs = [
            np.asarray(
                session.run(
                    None,
                    {name: np.ascontiguousarray(x[s : s + _BATCH], dtype=np.float32)},
                )[0]
            )
            for s in range(0, len(x), _BATCH)
        ]
        return np.concatenate(outs)

    return predict


def column_groups(preprocessing: Preprocessing) -> dict[str, list[int]]:
    """Map each original table column to its positions in the encoded input.

    Numeric columns come first, one position each, in ``numeric_columns``
    order; then each categorical column's one-hot block, in ``categories``
    order (the encoding :class:`~fedge.shared.preprocessing.Preprocessing` applies).

    Raises
    ------
    ModelError
        For a preprocessing that is not tabular.
    """
    if preprocessing.kind != "tabular":
        raise ModelError(
            f"column groups exist for tabular inputs only, got kind "
            f"{preprocessing.kind!r}; use occlusion saliency for shaped inputs"
        )
    groups = {name: [i] for i, name in enumerate(preprocessing.numeric_columns)}
    offset = len(preprocessing.numeric_columns)
    for name, categories in preprocessing.categories.items():
        groups[name] = list(range(offset, offset + len(categories)))
        offset += len(categories)
    return groups


@dataclass(frozen=True)
class ColumnImportance:
    """One column's permutation importance (accuracy points lost, 0-1 scale)."""

    column: str
    importance: float
    std: float
    encoded_positions: int


def permutation_importance(
    predict: Predict,
    x: np.ndarray,
    y: np.ndarray,
    groups: Mapping[str, list[int]],
    *,
    repeats: int = PERMUTATION_REPEATS,
    seed: int = 0,
) -> list[ColumnImportance]:
    """Accuracy lost when each column (group of encoded positions) is shuffled.

    Parameters
    ----------
    predict : callable
        Encoded inputs -> logits.
    x : ndarray, shape (n, d)
        Encoded held-out inputs.
    y : ndarray, shape (n,)
        Their labels.
    groups : mapping of str to list of int
        Column -> encoded positions (:func:`column_groups`); a group's
        positions are shuffled together.
    repeats : int, default 5
        Shuffles per column; the mean and standard deviation are reported.
    seed : int, default 0
        Seed of the shuffles.

    Returns
    -------
    list of ColumnImportance
        Most important first (ties in column order).

    Raises
    ------
    ModelError
        Without examples, or with a position outside ``x``'s columns.
    """
    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        raise ModelError("permutation importance needs at least one held-out example")
    bad = sorted({i for idx in groups.values() for i in idx if not 0 <= i < x.shape[1]})
    if bad:
        raise ModelError(
            f"encoded positions {bad} are outside the inputs' {x.shape[1]} columns; "
            "does the preprocessing belong to this model?"
        )
    rng = np.random.default_rng(seed)
    baseline = _accuracy(predict(x), y)
    results = []
    for column, positions in groups.items():
        drops = []
        for _ in range(repeats):
            shuffled = x.copy()
            shuffled[:, positions] = x[rng.permutation(len(x))][:, positions]
            drops.append(baseline - _accuracy(predict(shuffled), y))
        results.append(
            ColumnImportance(
                column=column,
                importance=float(np.mean(drops)),
                std=float(np.std(drops)),
                encoded_positions=len(positions),
            )
        )
    order = sorted(range(len(results)), key=lambda i: -results[i].importance)
    return [results[i] for i in order]


def occlusion_saliency(
    predict: Predict, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Drop in the true class's probability when each patch is occluded.

    The input's first axis is read as channels when it has two or more axes
    (``(C, H, W)`` images, ``(C, T)`` series): patches span the remaining axes
    and all channels. A flat ``(d,)`` input is cut into windows along its one
    axis. Each occluded axis is cut into at most 8 (two axes) or 16 (one axis)
    equal patches.

    Parameters
    ----------
    predict : callable
        Encoded inputs -> logits.
    x : ndarray, shape (n, *input_shape)
    y : ndarray, shape (n,)

    Returns
    -------
    saliency : ndarray, shape (n, *occluded_shape)
        Per input position: the probability drop of the patch covering it
        (negative where occluding helps).
    patch : tuple of int
        The patch size along each occluded axis.
    """
    x = np.asarray(x, dtype=np.float32)
    shape = x.shape[1:]
    occluded = shape[1:] if len(shape) >= 2 else shape
    per_axis = POSITIONS_PER_AXIS.get(len(occluded), 4)
    patch = tuple(max(1, -(-size // per_axis)) for size in occluded)
    starts = list(
        np.ndindex(*(-(-size // p) for size, p in zip(occluded, patch, strict=True)))
    )
    lead: tuple[slice, ...] = (slice(None),) if len(shape) >= 2 else ()
    saliency = np.zeros((len(x), *occluded), dtype=np.float32)
    base = _softmax(predict(x))[np.arange(len(x)), y]
    for i in range(len(x)):
        variants = np.repeat(x[i : i + 1], len(starts), axis=0)
        regions: list[tuple[slice, ...]] = []
        for k, start in enumerate(starts):
            region = tuple(
                slice(s * p, s * p + p) for s, p in zip(start, patch, strict=True)
            )
            variants[(slice(k, k + 1), *lead, *region)] = OCCLUSION_BASELINE
            regions.append(region)
        probabilities = _softmax(predict(variants))[:, y[i]]
        for region, probability in zip(regions, probabilities, strict=True):
            saliency[(slice(i, i + 1), *region)] = base[i] - probability
    return saliency, patch


def examples_per_class(
    y: np.ndarray, num_classes: int, *, per_class: int = EXAMPLES_PER_CLASS
) -> dict[int, list[int]]:
    """Return the first ``per_class`` indices of each class present in ``y``."""
    chosen: dict[int, list[int]] = {}
    for k in range(num_classes):
        indices = np.flatnonzero(np.asarray(y) == k)[:per_class]
        if len(indices):
            chosen[k] = [int(i) for i in indices]
    return chosen


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(y)))


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))

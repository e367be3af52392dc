"""Checks on one client reply before it may join the aggregate.

Pure functions: each returns ``None`` when the reply is usable, else one line
saying what is wrong with it (which array, what was expected, what came). The
reply checks in :mod:`fedge.server.reply_check` log that line with the node
id and drop the reply, as Flower's ``FedAvg`` drops error replies, so one bad
node costs its own update and not the round.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from fedge.shared import keys

# A client that would exceed its privacy budget replies with this metric set to 1
# and no arrays.
REFUSED = keys.REFUSED

ArraysLike = ArrayRecord | Mapping[str, Any]


def as_numpy_arrays(arrays: ArraysLike) -> dict[str, np.ndarray]:
    """Return ``{name: ndarray}`` from an ArrayRecord or a state-dict-like mapping."""
    if isinstance(arrays, ArrayRecord):
        return {name: array_values(array) for name, array in arrays.items()}
    out = {}
    for name, value in arrays.items():
        if hasattr(value, "detach"):  # a torch tensor; avoid importing torch here
            value = value.detach().cpu().numpy()
        out[name] = np.asarray(value)
    return out


def array_values(array: Array) -> np.ndarray:
    """Return the values of a Flower ``Array``, as ``array.numpy()`` does, read-only.

    ``Array.numpy()`` runs ``np.load`` on the ``.npy`` bytes, whose header
    parse (NumPy reads it with a safe ``literal_eval``) is most of its cost: a
    quarter of a millisecond per reply of a 10-array CNN, paid by every reply
    of every round. The replies of a run share a handful of headers, so each
    distinct header is parsed once, by NumPy's own reader, and the values are a
    view on the bytes. Anything else (another format version, object arrays,
    a length that does not match the header) goes to ``array.numpy()``, which
    loads or raises exactly as Flower does.
    """
    data = array.data
    layout = _npy_layout(bytes(data[: _npy_header_end(data)]))
    if layout is None:
        return array.numpy()
    dtype, shape, fortran_order, offset = layout
    count = math.prod(shape)
    if len(data) - offset != count * dtype.itemsize:
        return array.numpy()
    values = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return values.reshape(shape, order="F" if fortran_order else "C")


_NPY_MAGIC = b"\x93NUMPY"


def _npy_header_end(data: bytes) -> int:
    """Return where the ``.npy`` header ends (0 when ``data`` is no ``.npy``)."""
    if len(data) < 12 or data[:6] != _NPY_MAGIC:
        return 0
    if data[6] == 1:  # format 1.0: a 2-byte header length
        return 10 + int.from_bytes(data[8:10], "little")
    return 12 + int.from_bytes(data[8:12], "little")


@functools.lru_cache(maxsize=1024)
def _npy_layout(
    header: bytes,
) -> tuple[np.dtype[Any], tuple[int, ...], bool, int] | None:
    """Return dtype, shape, Fortran order and data offset of a ``.npy`` header.

    None for what :func:`array_values` leaves to ``np.load``: no header, a
    format other than 1.0 or 2.0, or a dtype holding Python objects.
    """
    stream = io.BytesIO(header)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            return None
    except (ValueError, TypeError, SyntaxError):  # np.load would fail too: let it
        return None
    if dtype.hasobject or stream.tell() != len(header):
        return None
    return dtype, tuple(shape), bool(fortran_order), len(header)


def validate_update(
    reference: ArraysLike,
    update: ArraysLike,
    *,
    max_update_norm: float = 0.0,
) -> str | None:
    """Check that ``update`` fits the global model ``reference``.

    Checks, in order: the same array names (none missing, none unexpected), then
    per array its shape, its dtype and that every value is finite, then (when
    ``max_update_norm`` > 0) the L2 norm of ``update - reference`` over all arrays.

    Parameters
    ----------
    reference : ArrayRecord or mapping of str to array
        The global arrays the client was sent this round.
    update : ArrayRecord or mapping of str to array
        The arrays the client sent back.
    max_update_norm : float, default 0.0
        Largest allowed L2 distance between ``update`` and ``reference``;
        0 means no bound.

    Returns
    -------
    str or None
        ``None`` if the update is usable, else the first problem found, e.g.
        ``"'fc1.weight' has shape (64, 10), expected (64, 20)"``.
    """
    ref = as_numpy_arrays(reference)
    upd = as_numpy_arrays(update)
    missing = [name for name in ref if name not in upd]
    if missing:
        return f"missing arrays {_few(missing)}"
    unexpected = [name for name in upd if name not in ref]
    if unexpected:
        return f"unexpected arrays {_few(unexpected)}"
    for name, expected in ref.items():
        got = upd[name]
        if got.shape != expected.shape:
            return f"{name!r} has shape {got.shape}, expected {expected.shape}"
        if got.dtype != expected.dtype:
            return f"{name!r} has dtype {got.dtype}, expected {expected.dtype}"
        if np.issubdtype(got.dtype, np.inexact):
            finite = np.isfinite(got)
            if not finite.all():
                nan = int(np.isnan(got).sum())
                inf = int(got.size - finite.sum()) - nan
                return f"{name!r} has {nan} NaN and {inf} Inf values"
    if max_update_norm > 0:
        # float64 so that a large model's sum of squares does not lose precision
        squares = sum(
            float(np.sum((upd[n].astype(np.float64) - ref[n].astype(np.float64)) ** 2))
            for n in ref
        )
        norm = math.sqrt(squares)
        if norm > max_update_norm:
            return (
                f"update has L2 norm {norm:.4g} from the global model, "
                f"above max-update-norm {max_update_norm:g}"
            )
    return None


def is_refusal(content: RecordDict) -> bool:
    """Return True when a reply says the client refused to train (privacy budget spent)."""
    return any(r.get(REFUSED) == 1 for r in content.metric_records.values())


def validate_reply(
    content: RecordDict,
    reference: ArraysLike | None,
    *,
    weighted_by_key: str = keys.NUM_EXAMPLES,
    arrayrecord_key: str = keys.ARRAYS,
    max_update_norm: float = 0.0,
) -> str | None:
    """Check a reply's structure, then (for train replies) its arrays.

    Flower's strategies raise on a reply without exactly one ArrayRecord and one
    MetricRecord carrying ``weighted_by_key``, which would end the whole run;
    finding it here lets the caller drop that one reply instead.

    Parameters
    ----------
    content : RecordDict
        The reply's content.
    reference : ArrayRecord or mapping, optional
        The global arrays sent this round; ``None`` for evaluation replies, which
        carry no arrays.
    weighted_by_key : str, default "num-examples"
        Metric the strategy weights replies by; must be a positive finite number.
    arrayrecord_key : str, default "arrays"
        Name under which the reply must carry its arrays.
    max_update_norm : float, default 0.0
        Passed to :func:`validate_update`.

    Returns
    -------
    str or None
        ``None`` if usable, else the first problem found.
    """
    metric_records = content.metric_records
    if len(metric_records) != 1:
        return f"reply carries {len(metric_records)} MetricRecords, expected 1"
    metrics: MetricRecord = next(iter(metric_records.values()))
    if weighted_by_key not in metrics:
        return f"metric {weighted_by_key!r} is missing"
    weight = metrics[weighted_by_key]
    if isinstance(weight, list) or not math.isfinite(weight) or weight <= 0:
        return f"metric {weighted_by_key!r} must be a positive number, got {weight!r}"
    if reference is None:
        return None
    array_records = content.array_records
    if list(array_records) != [arrayrecord_key]:
        return (
            f"reply carries ArrayRecords {sorted(array_records)}, "
            f"expected exactly [{arrayrecord_key!r}]"
        )
    return validate_update(
        reference, array_records[arrayrecord_key], max_update_norm=max_update_norm
    )


def _few(names: list[str], limit: int = 3) -> str:
    """Return ``['a', 'b', 'c'] and 2 more``: enough names to act on, not a wall of text."""
    shown = repr(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def metric_key_problems(contents: list[RecordDict]) -> list[str | None]:
    """Per reply, ``None`` or why its metric names differ from the others'.

    Flower's strategies refuse to aggregate (and raise) when replies' metric names
    differ. The most common set of names wins (the first one seen on a tie); a
    reply with any other set is reported so the caller can drop just that one.
    Each reply must already have exactly one MetricRecord (see
    :func:`validate_reply`).
    """
    names = [frozenset(next(iter(c.metric_records.values()))) for c in contents]
    if not names:
        return []
    counts: dict[frozenset[str], int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    majority = max(counts, key=lambda n: counts[n])  # max keeps the first on ties
    return [
        None
        if n == majority
        else f"metrics {sorted(n)} differ from the other replies' {sorted(majority)}"
        for n in names
    ]

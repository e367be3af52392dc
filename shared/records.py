"""Conversion between PyTorch state dicts and Flower's records, and typed reads of entries."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from torch import nn

from fedge.shared.errors import ModelError


def state_dict_to_record(state_dict: dict[str, torch.Tensor]) -> ArrayRecord:
    """Pack a state dict into an ArrayRecord (detached CPU copies, order kept)."""
    return ArrayRecord(
        OrderedDict((k, v.detach().cpu()) for k, v in state_dict.items())
    )


def record_to_state_dict(record: ArrayRecord) -> OrderedDict[str, torch.Tensor]:
    """Unpack an ArrayRecord into a state dict of CPU tensors."""
    return record.to_torch_state_dict()


def load_record_into(model: nn.Module, record: ArrayRecord) -> None:
    """Load ``record`` into ``model``; name the first mismatch if it does not fit.

    Raises
    ------
    ModelError
        When names or shapes differ from the model's own.
    """
    incoming = record_to_state_dict(record)
    own = model.state_dict()
    missing = [k for k in own if k not in incoming]
    unexpected = [k for k in incoming if k not in own]
    if missing or unexpected:
        raise ModelError(
            f"Weights do not fit the model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}."
        )
    for name, tensor in incoming.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise ModelError(
                f"Weights do not fit the model: {name!r} has shape "
                f"{tuple(tensor.shape)}, expected {tuple(own[name].shape)}."
            )
    model.load_state_dict(incoming)


def select_arrays(record: ArrayRecord, names: Iterable[str]) -> ArrayRecord:
    """Return the entries ``names`` of ``record``, in that order (shared, not copied).

    Raises
    ------
    KeyError
        When ``record`` lacks one of ``names``.
    """
    return ArrayRecord(OrderedDict((name, record[name]) for name in names))


def merge_arrays(order: Iterable[str], *records: ArrayRecord) -> ArrayRecord:
    """One record holding every entry of ``records``, in the order of ``order``.

    The records hold disjoint names, e.g. a round's trainable arrays and the
    frozen ones; together they name exactly ``order``.

    Raises
    ------
    KeyError
        When no record holds a name of ``order``.
    """
    merged: dict[str, Any] = {}
    for record in records:
        merged.update(record.items())
    return ArrayRecord(OrderedDict((name, merged[name]) for name in order))


def record_sha256(record: ArrayRecord) -> str:
    """Hex SHA-256 of a record's names, dtypes, shapes and values, in name order.

    Independent of how the arrays were serialised or ordered: equal arrays
    give equal digests, and a changed value, name, dtype or shape another.
    """
    digest = hashlib.sha256()
    for name in sorted(record.keys()):
        values = np.ascontiguousarray(record[name].numpy())
        digest.update(f"{name}\0{values.dtype.str}\0{values.shape}\0".encode())
        digest.update(values.tobytes())
    return digest.hexdigest()


# One value of a ConfigRecord or MetricRecord entry that is not a list.
Scalar = int | float | str | bytes | bool


def record_scalar(record: ConfigRecord | MetricRecord, key: str) -> Scalar:
    """Return the single value under ``key`` (Flower's record values may also be lists).

    Raises
    ------
    KeyError
        Without ``key``.
    ModelError
        When ``key`` holds a list.
    """
    value = record[key]
    if isinstance(value, list):
        raise ModelError(f"record entry {key!r} holds a list, expected one value")
    return value


def record_list(record: ConfigRecord | MetricRecord, key: str) -> list[Scalar]:
    """Return the list under ``key``, or an empty list without it.

    Raises
    ------
    ModelError
        When ``key`` holds a single value.
    """
    value = record.get(key, [])
    if not isinstance(value, list):
        raise ModelError(f"record entry {key!r} holds {value!r}, expected a list")
    return list(value)

"""Conversion between PyTorch state dicts and Flower's ArrayRecord."""

from __future__ import annotations

from collections import OrderedDict

import torch
from flwr.app import ArrayRecord
from torch import nn

from shared.errors import ModelError


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

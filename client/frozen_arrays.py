"""The node's side of frozen parameters: keep them once, train and reply the rest.

With ``trainable`` leaving parameters frozen, the coordinator sends a node
every array once and afterwards only the trainable ones
(:mod:`fedge.server.frozen_arrays`), naming the frozen arrays by their SHA-256 in
every message. The node keeps the frozen arrays in its ``context.state``
(which outlives each message, also when every message runs in a fresh
process), under that digest: a copy of other arrays, or none (state wiped, the
SuperNode restarted), is not used; the node replies
:data:`fedge.shared.keys.FROZEN_MISSING` and is sent every array again.

Whatever a node received, it freezes the same parameters (``requires_grad``
off: no gradient, no DP noise, not changed) and replies only the exchanged
arrays.
"""

from __future__ import annotations

import logging

from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from torch import nn

from fedge.shared.errors import ModelError
from fedge.shared.records import (
    load_record_into,
    merge_arrays,
    record_sha256,
    select_arrays,
    state_dict_to_record,
)
from fedge.shared.trainable import TrainableSelection

logger = logging.getLogger(__name__)

FROZEN_ARRAYS_KEY = "frozen-arrays"  # context.state ArrayRecord: the frozen arrays
FROZEN_DIGEST_KEY = "frozen-arrays-digest"  # context.state: their SHA-256 ("sha256")


def receive_arrays(
    model: nn.Module,
    arrays: ArrayRecord,
    *,
    selection: TrainableSelection,
    frozen_sha256: str,
    state: RecordDict,
) -> bool:
    """Load a message's arrays into ``model``, with the frozen ones it holds.

    Parameters
    ----------
    model : nn.Module
        Gets every parameter and buffer.
    arrays : ArrayRecord
        The message's arrays: every one of the model's, or only the exchanged.
    selection : TrainableSelection
        The run's trainable and frozen parameters.
    frozen_sha256 : str
        The digest the coordinator sent; "" when nothing is frozen.
    state : RecordDict
        The node's ``context.state``: where the frozen arrays are kept.

    Returns
    -------
    bool
        False, with ``model`` untouched, when only the exchanged arrays came and
        the node does not hold the frozen arrays ``frozen_sha256`` names.

    Raises
    ------
    ModelError
        The arrays do not fit the model, or the frozen arrays sent do not
        have the digest sent with them.
    """
    if not frozen_sha256:
        load_record_into(model, arrays)
        return True
    names = list(model.state_dict().keys())
    frozen = set(selection.frozen)
    frozen_names = [name for name in names if name in frozen]
    if all(name in arrays for name in frozen_names):
        kept = select_arrays(arrays, frozen_names)
        digest = record_sha256(kept)
        if digest != frozen_sha256:
            raise ModelError(
                f"The frozen arrays sent have SHA-256 {digest[:16]}..., the "
                f"coordinator named {frozen_sha256[:16]}...: the message was "
                "altered, or the node's run config selects other trainable "
                "parameters than the coordinator's. Nothing trained."
            )
        load_record_into(model, arrays)
        state[FROZEN_ARRAYS_KEY] = kept
        state[FROZEN_DIGEST_KEY] = ConfigRecord({"sha256": digest})
        return True
    absent = [n for n in names if n not in frozen and n not in arrays]
    if absent:
        raise ModelError(
            f"Weights do not fit the model: the message lacks {absent[:3]} (and "
            "the frozen arrays). Nothing trained."
        )
    held = state.array_records.get(FROZEN_ARRAYS_KEY)
    digest_record = state.config_records.get(FROZEN_DIGEST_KEY)
    held_digest = str(digest_record.get("sha256", "")) if digest_record else ""
    if held is None or held_digest != frozen_sha256:
        logger.warning(
            "this node does not hold the frozen arrays %s... (%s); asking the "
            "coordinator for every array",
            frozen_sha256[:16],
            "none kept" if held is None else f"it keeps {held_digest[:16]}...",
        )
        return False
    load_record_into(model, merge_arrays(names, held, arrays))
    return True


def reply_arrays(model: nn.Module, selection: TrainableSelection) -> ArrayRecord:
    """Return the arrays a node replies: its state without the frozen parameters."""
    state = model.state_dict()
    return state_dict_to_record(
        {name: state[name] for name in selection.exchanged(state.keys())}
    )

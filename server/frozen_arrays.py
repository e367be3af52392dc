"""Frozen arrays cross the wire once per node; trainable arrays every round.

With ``trainable`` leaving parameters frozen, the coordinator keeps the frozen
arrays aside (:class:`ArraysWire`): the strategy sees and aggregates only the
exchanged arrays (:meth:`ArraysWire.split`), so no aggregator, server-side
optimiser (FedAdam's moments) or central-DP noise ever touches a frozen array,
and every full model the coordinator needs (central evaluation, checkpoints,
``model.pt``) is the aggregate with the frozen arrays put back
(:meth:`ArraysWire.merge`).

Every message names the frozen arrays by their SHA-256
(:data:`fedge.shared.keys.FROZEN_SHA256`). A node not known to hold them gets every
array once; after it answered, only the exchanged ones. A node that lost them
(state wiped, restarted) replies :data:`fedge.shared.keys.FROZEN_MISSING` without
doing anything, and :meth:`ArraysWire.exchange` sends it the whole model at
once, in the same round: the round does not lose it.

Who holds the arrays is the coordinator's memory of this run: after a resume,
every node gets them once more.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedge.server.reply_collection import send_and_collect
from fedge.shared import keys
from fedge.shared.records import merge_arrays, record_sha256, select_arrays

logger = logging.getLogger(__name__)


class ArraysWire:
    """Which arrays each message carries, and which nodes hold the frozen ones.

    Parameters
    ----------
    frozen : ArrayRecord, optional
        The frozen arrays (empty or None: every array is exchanged and this
        wire changes nothing).
    order : sequence of str
        Every array name of the model, in its state_dict order.

    Attributes
    ----------
    sha256 : str
        The frozen arrays' digest (:func:`fedge.shared.records.record_sha256`).
    holders : set of int
        Nodes that answered a message carrying the frozen arrays.
    """

    def __init__(
        self, frozen: ArrayRecord | None = None, order: Sequence[str] = ()
    ) -> None:
        self.frozen = frozen if frozen is not None else ArrayRecord()
        self.order = list(order)
        self.sha256 = record_sha256(self.frozen) if len(self.frozen) else ""
        self.holders: set[int] = set()

    @classmethod
    def for_model(cls, arrays: ArrayRecord, frozen_names: Iterable[str]) -> ArraysWire:
        """Return the wire for a model whose full arrays are ``arrays``."""
        frozen = set(frozen_names)
        names = [name for name in arrays if name in frozen]
        if not names:
            return cls()
        return cls(select_arrays(arrays, names), list(arrays.keys()))

    @property
    def active(self) -> bool:
        """Whether some arrays are frozen (else every array goes every time)."""
        return bool(self.sha256)

    def split(self, arrays: ArrayRecord) -> ArrayRecord:
        """Return the exchanged arrays of a full model (all when none is frozen)."""
        if not self.active:
            return arrays
        return select_arrays(arrays, [n for n in self.order if n not in self.frozen])

    def merge(self, exchanged: ArrayRecord) -> ArrayRecord:
        """Return the full model: ``exchanged`` plus the frozen arrays, in order."""
        if not self.active:
            return exchanged
        return merge_arrays(self.order, exchanged, self.frozen)

    def exchange(
        self, grid: Grid, messages: list[Message], *, timeout_s: float
    ) -> tuple[list[Message], list[Message]]:
        """Send ``messages`` (carrying the exchanged arrays); return replies and sent.

        Each message is addressed first (:meth:`address`); a node that replies
        it lacks the frozen arrays is sent its message again with every array,
        and that reply takes the place of the first.

        Returns
        -------
        replies : list of Message
            As :func:`fedge.server.reply_collection.send_and_collect`.
        sent : list of Message
            Every message pushed, resent ones included (for the byte count).
        """
        if not self.active:
            return send_and_collect(grid, messages, timeout_s=timeout_s), messages
        sent = [self.address(m) for m in messages]
        replies = send_and_collect(grid, sent, timeout_s=timeout_s)
        lacking = {
            int(r.metadata.src_node_id)
            for r in replies
            if not r.has_error() and frozen_missing(r.content)
        }
        resent = [
            self.address(m, full=True)
            for m in messages
            if int(m.metadata.dst_node_id) in lacking
        ]
        if resent:
            self.holders.difference_update(lacking)
            logger.warning(
                "node(s) %s no longer hold the frozen arrays (state lost): sending "
                "them every array again",
                ", ".join(str(n) for n in sorted(lacking)),
            )
            replies = [
                r for r in replies if int(r.metadata.src_node_id) not in lacking
            ] + send_and_collect(grid, resent, timeout_s=timeout_s)
        full_to = {
            int(m.metadata.dst_node_id) for m in [*sent, *resent] if self.is_full(m)
        }
        self.holders.update(
            int(r.metadata.src_node_id)
            for r in replies
            if not r.has_error()
            and not frozen_missing(r.content)
            and int(r.metadata.src_node_id) in full_to
        )
        return replies, [*sent, *resent]

    def address(self, message: Message, *, full: bool = False) -> Message:
        """Return a copy of ``message`` naming the frozen arrays, with them if needed.

        The node gets every array when ``full`` or when it is not known to
        hold the frozen ones; else only the exchanged arrays it came with.
        """
        node = int(message.metadata.dst_node_id)
        content = RecordDict(dict(message.content.items()))
        config = content.config_records.get(keys.CONFIG, ConfigRecord())
        content[keys.CONFIG] = ConfigRecord({**config, keys.FROZEN_SHA256: self.sha256})
        if full or node not in self.holders:
            content[keys.ARRAYS] = self.merge(content.array_records[keys.ARRAYS])
        return Message(
            content=content,
            dst_node_id=node,
            message_type=message.metadata.message_type,
            group_id=message.metadata.group_id,
        )

    def is_full(self, message: Message) -> bool:
        """Whether ``message`` carries the frozen arrays."""
        arrays = message.content.array_records.get(keys.ARRAYS)
        return arrays is not None and all(name in arrays for name in self.frozen)


def frozen_missing(content: RecordDict) -> bool:
    """Whether a reply says its node lacks the frozen arrays it was told of."""
    metrics = content.metric_records.get(keys.METRICS)
    return metrics is not None and bool(metrics.get(keys.FROZEN_MISSING, 0))

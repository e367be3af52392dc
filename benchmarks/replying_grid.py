"""Fake nodes for the coordinator benchmark: a grid whose nodes reply at once.

The replies are real Flower reply Messages shaped as fedge's ClientApp shapes
them, built in this process; the time spent building them is the clients' and
is counted apart, so that the benchmark can leave it out.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from uuid import uuid4

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedge.shared import keys

NUM_CLASSES = 10  # digits


class ReplyingGrid:
    """A grid of ``num_nodes`` nodes that reply to every message at once.

    A train reply is what a ClientApp sends back: the received arrays plus
    Gaussian noise of standard deviation ``perturbation_std`` (float32), with
    ``num-examples`` and ``train-loss`` metrics. An evaluate reply carries a
    node's ``eval-accuracy``, ``eval-loss``, ``num-examples`` and
    ``label-counts``. ``client_s`` accumulates the seconds spent building
    replies, the part of a round that is not the coordinator's.
    """

    def __init__(
        self, num_nodes: int, *, seed: int = 0, perturbation_std: float = 0.01
    ) -> None:
        self._node_ids = list(range(1, num_nodes + 1))
        self._rng = np.random.default_rng(seed)
        self._std = perturbation_std
        self.client_s = 0.0
        self._replies: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        """Return the ids of all nodes, 1..N."""
        return list(self._node_ids)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Build one reply per message now, timed as client time; return ids."""
        started = time.perf_counter()
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            ids.append(message.metadata.message_id)
            self._replies[message.metadata.message_id] = self._reply(message)
        self.client_s += time.perf_counter() - started
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Return the replies to ``message_ids``, each handed out once."""
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def _reply(self, message: Message) -> Message:
        if message.metadata.message_type == MessageType.EVALUATE:
            return self._evaluation_reply(message)
        received = message.content.array_records[keys.ARRAYS]
        arrays = ArrayRecord(
            {
                name: Array(
                    (
                        array.numpy() + self._rng.normal(0.0, self._std, array.shape)
                    ).astype(np.float32)
                )
                for name, array in received.items()
            }
        )
        metrics = MetricRecord(
            {
                keys.NUM_EXAMPLES: int(self._rng.integers(50, 150)),
                keys.TRAIN_LOSS: float(self._rng.uniform(0.1, 2.0)),
            }
        )
        content = RecordDict({keys.ARRAYS: arrays, keys.METRICS: metrics})
        return Message(content, reply_to=message)

    def _evaluation_reply(self, message: Message) -> Message:
        label_counts = [int(c) for c in self._rng.integers(1, 20, NUM_CLASSES)]
        metrics = MetricRecord(
            {
                keys.EVAL_ACCURACY: float(self._rng.uniform(0.0, 1.0)),
                keys.EVAL_LOSS: float(self._rng.uniform(0.1, 2.0)),
                keys.NUM_EXAMPLES: sum(label_counts),
                keys.LABEL_COUNTS: label_counts,
            }
        )
        return Message(RecordDict({keys.METRICS: metrics}), reply_to=message)


@contextlib.contextmanager
def task_identity() -> Iterator[None]:
    """Give Flower's Message constructor run/node/task ids, as a ServerApp has.

    Outside a run Flower has none; the previous values (or their absence) come
    back afterwards.
    """
    saved = {}
    for name in ("run_id", "node_id", "task_id"):
        try:
            saved[name] = getattr(TaskIdentity, name)
        except RuntimeError:  # unset
            saved[name] = None
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(TaskIdentity, name, value)

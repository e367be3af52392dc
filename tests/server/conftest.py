"""Fakes for driving Flower strategies by hand: a Grid, replies, a task identity."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.app.error import Error
from flwr.supercore.task_identity import TaskIdentity


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    """Flower stamps run/node/task ids on every Message it builds; give it some."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


class FakeGrid:
    """Only what strategies use: ``get_node_ids`` (a list, or a list per call)."""

    def __init__(self, node_ids: Iterable[int] | Callable[[], Iterable[int]]):
        self._node_ids = node_ids
        self.calls = 0

    def get_node_ids(self) -> list[int]:
        self.calls += 1
        ids = self._node_ids() if callable(self._node_ids) else self._node_ids
        return list(ids)


def record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def reply(
    to: Message,
    arrays: dict[str, np.ndarray] | None,
    num_examples: int = 10,
    **metrics: float,
) -> Message:
    """A client's train/evaluate reply to ``to``, as a ClientApp would build it."""
    content = RecordDict(
        {"metrics": MetricRecord({"num-examples": num_examples, **metrics})}
    )
    if arrays is not None:
        content["arrays"] = record(arrays)
    return Message(content, reply_to=to)


def error_reply(to: Message) -> Message:
    return Message(Error(code=0, reason="Node Unavailable"), reply_to=to)


@pytest.fixture
def fakes():
    """``fakes.FakeGrid``, ``fakes.record``, ``fakes.reply``, ``fakes.error_reply``."""

    class _Fakes:
        pass

    f = _Fakes()
    f.FakeGrid = FakeGrid
    f.record = staticmethod(record)
    f.reply = staticmethod(reply)
    f.error_reply = staticmethod(error_reply)
    return f

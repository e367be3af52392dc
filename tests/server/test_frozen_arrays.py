"""The coordinator's side of frozen arrays: out of aggregation, on the wire once per node.

Nodes are played by a fake Grid that behaves as the ClientApp does
(:mod:`fedge.client.frozen_arrays`): it keeps the frozen arrays it was sent, asks for
them when it lacks them, and replies only the exchanged arrays.
"""

from __future__ import annotations

from collections import OrderedDict
from uuid import uuid4

import numpy as np
import pytest
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from fedge.server import reply_collection
from fedge.server.client_evaluation import evaluate_every_node
from fedge.server.federation_loop import run_rounds
from fedge.server.frozen_arrays import ArraysWire
from fedge.server.robust_strategy import RobustStrategy
from fedge.server.strategy_factory import build_strategy
from fedge.shared import keys
from fedge.shared.config import from_run_config
from fedge.shared.models import build_model, default_spec
from fedge.shared.records import state_dict_to_record
from fedge.shared.trainable import select_trainable, trainable_size_bytes

FROZEN = ["net.1.weight", "net.1.bias"]
EXCHANGED = ["net.3.weight", "net.3.bias", "net.5.weight", "net.5.bias"]


@pytest.fixture(autouse=True)
def instant_waits(monkeypatch):
    class FakeTime:
        now = 0.0

        def monotonic(self):
            return self.now

        def sleep(self, seconds):
            self.now += seconds

    monkeypatch.setattr(reply_collection, "time", FakeTime())


def mlp():
    return build_model(default_spec("mlp", (64,), 10), model_seed=0)


def full_arrays() -> ArrayRecord:
    return state_dict_to_record(mlp().state_dict())


class Node:
    """A ClientApp's array handling: keep the frozen arrays, reply the rest + 0.5."""

    def __init__(self):
        self.kept: dict[str, np.ndarray] | None = None
        self.received: list[list[str]] = []

    def __call__(self, message: Message) -> Message:
        arrays = message.content[keys.ARRAYS]
        self.received.append(list(arrays.keys()))
        if all(name in arrays for name in FROZEN):
            self.kept = {name: arrays[name].numpy() for name in FROZEN}
        elif self.kept is None:
            metrics = MetricRecord({keys.FROZEN_MISSING: 1})
            return Message(RecordDict({keys.METRICS: metrics}), reply_to=message)
        content = RecordDict(
            {keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 10, keys.EVAL_LOSS: 1.0})}
        )
        if message.metadata.message_type == MessageType.TRAIN:
            content[keys.ARRAYS] = ArrayRecord(
                OrderedDict(
                    (n, torch.from_numpy(arrays[n].numpy() + 0.5)) for n in EXCHANGED
                )
            )
        return Message(content, reply_to=message)


class FakeGrid:
    def __init__(self, nodes):
        self.nodes = nodes
        self.pushed: list[list[Message]] = []
        self._replies = {}

    def get_node_ids(self):
        return list(self.nodes)

    def push_messages(self, messages):
        messages = list(messages)
        self.pushed.append(messages)
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            ids.append(message.metadata.message_id)
            self._replies[message.metadata.message_id] = self.nodes[
                message.metadata.dst_node_id
            ](message)
        return ids

    def pull_messages(self, message_ids):
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]


def wire_for(arrays: ArrayRecord) -> ArraysWire:
    return ArraysWire.for_model(
        arrays, select_trainable(mlp(), "net.3.*,net.5.*").frozen
    )


def train_message(node: int, arrays: ArrayRecord) -> Message:
    content = RecordDict({keys.ARRAYS: arrays, keys.CONFIG: ConfigRecord({"a": 1})})
    return Message(content, dst_node_id=node, message_type=MessageType.TRAIN)


def run(grid, strategy, arrays, wire, rounds=3, outcomes=None):
    return run_rounds(
        grid,
        strategy,
        arrays=arrays,
        first_round=1,
        last_round=rounds,
        train_config=ConfigRecord({"lr": 0.1}),
        evaluate_config=ConfigRecord({}),
        reply_timeout_s=5.0,
        central_eval=lambda _, __: {"accuracy": 0.5},
        on_round_end=(outcomes if outcomes is not None else []).append,
        federated_evaluation=False,
        wire=wire,
    )


# -------------------------------------------------------------- split / merge
def test_split_and_merge_give_back_the_model_in_order():
    arrays = full_arrays()
    wire = wire_for(arrays)

    assert list(wire.split(arrays).keys()) == EXCHANGED
    merged = wire.merge(wire.split(arrays))
    assert list(merged.keys()) == FROZEN + EXCHANGED
    for name in arrays:
        assert np.array_equal(merged[name].numpy(), arrays[name].numpy())


def test_without_frozen_parameters_the_wire_changes_nothing():
    arrays = full_arrays()
    wire = ArraysWire.for_model(arrays, ())
    assert not wire.active
    assert wire.split(arrays) is arrays and wire.merge(arrays) is arrays


# -------------------------------------------------------- once per node, bytes
@pytest.mark.parametrize(
    "settings",
    [
        {"strategy": "fedavg"},
        {"strategy": "fedadam", "server-learning-rate": 0.1},
        {"strategy": "fedmedian"},
        # Flower's central-DP wrapper clips and noises the aggregate.
        {"strategy": "fedavg", "dp-mode": "central", "noise-multiplier": 1.0},
    ],
)
def test_frozen_arrays_reach_each_node_once_and_stay_bit_for_bit(settings):
    nodes = {1: Node(), 2: Node()}
    grid = FakeGrid(nodes)
    arrays = full_arrays()
    wire = wire_for(arrays)
    config = from_run_config({"min-nodes": 2, **settings}, fill_defaults=True)
    inner = build_strategy(config, num_nodes_hint=2)
    # As the ServerApp wraps it (which also casts FedAdam's float64 back).
    strategy = RobustStrategy.from_config(inner, config)
    outcomes = []

    final = run(grid, strategy, arrays, wire, outcomes=outcomes)

    for node in nodes.values():
        assert node.received == [FROZEN + EXCHANGED, EXCHANGED, EXCHANGED]
    for name in FROZEN:
        assert np.array_equal(final[name].numpy(), arrays[name].numpy())
    for name in EXCHANGED:
        assert not np.array_equal(final[name].numpy(), arrays[name].numpy())
    if settings["strategy"] == "fedadam":  # the server optimiser never saw them
        assert sorted(inner.current_arrays) == sorted(EXCHANGED)
        assert sorted(inner.m_t) == sorted(EXCHANGED)
    # Bytes: Flower's count of the arrays each message and reply carried.
    full_bytes = arrays.count_bytes()
    part_bytes = wire.split(arrays).count_bytes()
    assert [o.bytes_sent for o in outcomes] == [
        2 * full_bytes,
        2 * part_bytes,
        2 * part_bytes,
    ]
    assert all(o.bytes_received == 2 * part_bytes for o in outcomes)
    trainable_bytes = trainable_size_bytes(
        mlp(), select_trainable(mlp(), "net.3.*,net.5.*")
    )
    assert outcomes[-1].bytes_sent / 2 / trainable_bytes <= 1.05
    assert outcomes[0].bytes_sent / 2 / trainable_bytes > 1.9


def test_a_node_that_lost_the_frozen_arrays_gets_them_in_the_same_round(caplog):
    nodes = {1: Node(), 2: Node()}
    grid = FakeGrid(nodes)
    arrays = full_arrays()
    wire = wire_for(arrays)
    wire.exchange(
        grid, [train_message(n, wire.split(arrays)) for n in nodes], timeout_s=5
    )
    nodes[2].kept = None  # its state is wiped

    replies, sent = wire.exchange(
        grid, [train_message(n, wire.split(arrays)) for n in nodes], timeout_s=5
    )

    assert sorted(int(r.metadata.src_node_id) for r in replies) == [1, 2]
    assert all(keys.ARRAYS in r.content for r in replies)
    assert nodes[2].received[-2:] == [EXCHANGED, FROZEN + EXCHANGED]
    assert [list(m.content[keys.ARRAYS].keys()) for m in sent] == [
        EXCHANGED,
        EXCHANGED,
        FROZEN + EXCHANGED,
    ]
    assert wire.holders == {1, 2}
    assert "node(s) 2 no longer hold the frozen arrays" in caplog.text


def test_every_message_names_the_frozen_arrays_by_digest():
    nodes = {1: Node()}
    grid = FakeGrid(nodes)
    arrays = full_arrays()
    wire = wire_for(arrays)

    wire.exchange(grid, [train_message(1, wire.split(arrays))], timeout_s=5)

    config = grid.pushed[0][0].content[keys.CONFIG]
    assert config[keys.FROZEN_SHA256] == wire.sha256
    assert config["a"] == 1
    assert len(wire.sha256) == 64


def test_per_client_evaluation_sends_only_the_trainable_to_holders():
    nodes = {1: Node(), 2: Node()}
    grid = FakeGrid(nodes)
    arrays = full_arrays()
    wire = wire_for(arrays)
    wire.exchange(grid, [train_message(1, wire.split(arrays))], timeout_s=5)

    entries = evaluate_every_node(
        grid,
        arrays,
        ConfigRecord({}),
        server_round=1,
        timeout_s=5,
        wire=wire,
    )

    assert nodes[1].received[-1] == EXCHANGED
    assert nodes[2].received[-1] == FROZEN + EXCHANGED
    assert wire.holders == {1, 2}
    assert len(entries) == 0  # the fake's replies lack label counts: left out

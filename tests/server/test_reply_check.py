"""The reply checks the round loop runs before a strategy sees a round's replies."""

import logging

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import FedAvg

from fedge.server.reply_check import ReplyCheck, in_partition_order
from fedge.server.strategy_factory import build_strategy
from fedge.shared.config import from_run_config

LOGGER = "fedge.server.reply_check"


def global_w(value=0.0):
    return {"w": np.full((2, 2), value, np.float32)}


def fedavg(nodes=2, **kwargs):
    kwargs.setdefault("fraction_evaluate", 0.0)
    return FedAvg(min_available_nodes=nodes, min_train_nodes=nodes, **kwargs)


def sent(strategy, fakes, nodes, stage="train"):
    """The messages ``strategy`` sends ``nodes`` in round 1, by node."""
    configure = getattr(strategy, f"configure_{stage}")
    msgs = configure(1, fakes.record(global_w()), ConfigRecord(), fakes.FakeGrid(nodes))
    return {m.metadata.dst_node_id: m for m in msgs}


# ---------------------------------------------------------------- training
def test_bad_replies_are_dropped_one_line_each(fakes, caplog):
    # Prepare: five nodes; one good, one wrong shape, one NaN, one refusal, one error
    strategy = fedavg(5)
    m = sent(strategy, fakes, [1, 2, 3, 4, 5])
    nan = global_w(1.0)
    nan["w"][0, 0] = np.nan
    replies = [
        fakes.reply(m[1], global_w(2.0), train_loss=0.5),
        fakes.reply(m[2], {"w": np.zeros(3, np.float32)}, train_loss=0.5),
        fakes.reply(m[3], nan, train_loss=0.5),
        fakes.reply(m[4], None, refused=1),
        fakes.error_reply(m[5]),
    ]
    # Execute
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        checked = ReplyCheck().check_train(1, replies, global_w())
    # Assert: only node 1 is kept; the error goes along for Flower to skip
    assert [r.metadata.src_node_id for r in checked.kept] == [1]
    assert [r.metadata.src_node_id for r in checked.errors] == [5]
    arrays, metrics = strategy.aggregate_train(1, checked.kept + checked.errors)
    np.testing.assert_array_equal(arrays["w"].numpy(), global_w(2.0)["w"])
    assert metrics["train_loss"] == pytest.approx(0.5)
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert lines == [
        "node 2: 'w' has shape (3,), expected (2, 2); update dropped",
        "node 3: 'w' has 1 NaN and 0 Inf values; update dropped",
        "node 4 refused to train: its privacy budget is spent; its replies are "
        "not aggregated (reported once per node)",
    ]
    assert (checked.replies, checked.dropped, checked.refused) == (4, 2, 1)
    assert checked.enough
    assert {c["node-id"]: c["status"] for c in checked.clients} == {
        1: "aggregated",
        2: "dropped",
        3: "dropped",
        4: "refused",
    }
    assert checked.clients[0]["problem"] == "'w' has shape (3,), expected (2, 2)"
    assert checked.clients[-1]["train_loss"] == 0.5


def test_a_refusal_is_logged_once_per_node_for_the_run(fakes, caplog):
    checks = ReplyCheck()
    refused = []
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for server_round in (1, 2, 3):
            m = sent(fedavg(), fakes, [1, 2])
            replies = [
                fakes.reply(m[1], global_w(1.0)),
                fakes.reply(m[2], None, refused=1),
            ]
            refused.append(
                checks.check_train(server_round, replies, global_w()).refused
            )
    assert caplog.text.count("node 2 refused to train") == 1
    assert refused == [1, 1, 1]
    assert checks.refused_nodes == {2}


def test_refusals_logged_survive_a_resume(fakes, caplog):
    first = ReplyCheck()
    m = sent(fedavg(), fakes, [1, 2])
    replies = [fakes.reply(m[1], global_w(1.0)), fakes.reply(m[2], None, refused=1)]
    first.check_train(1, replies, global_w())
    resumed = ReplyCheck()
    resumed.load_state_dict(first.state_dict())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        resumed.check_train(2, replies, global_w())
    assert "refused to train" not in caplog.text
    assert resumed.refused_nodes == {2}


def test_update_norm_bound_drops_far_updates(fakes, caplog):
    m = sent(fedavg(), fakes, [1, 2])
    # node 2 moves each of 4 weights by 10: norm 20
    replies = [fakes.reply(m[1], global_w(0.1)), fakes.reply(m[2], global_w(10.0))]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        checked = ReplyCheck(max_update_norm=1.0).check_train(1, replies, global_w())
    assert [r.metadata.src_node_id for r in checked.kept] == [1]
    assert "node 2: update has L2 norm 20 from the global model, above " in caplog.text


def test_odd_metric_names_drop_one_reply_instead_of_ending_the_run(fakes, caplog):
    replies_for = {
        1: {"train_loss": 1.0},
        2: {"train_loss": 3.0},
        3: {"train_loss": 9.0, "extra": 1.0},
    }
    strategy = fedavg(3)
    m = sent(strategy, fakes, [1, 2, 3])
    replies = [fakes.reply(m[n], global_w(n), **kv) for n, kv in replies_for.items()]
    # Control: Flower alone gives up on the whole round
    with pytest.raises(InconsistentMessageReplies):
        strategy.aggregate_train(1, replies)
    # Checked: node 3 is dropped, nodes 1 and 2 averaged
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        checked = ReplyCheck().check_train(1, replies, global_w())
    arrays, metrics = strategy.aggregate_train(1, checked.kept)
    np.testing.assert_allclose(arrays["w"].numpy(), 1.5)
    assert metrics["train_loss"] == pytest.approx(2.0)
    assert (
        "node 3: metrics ['extra', 'num-examples', 'train_loss'] differ" in caplog.text
    )
    assert checked.clients[-1]["status"] == "dropped"


def test_too_few_usable_replies_are_not_enough(fakes, caplog):
    m = sent(fedavg(), fakes, [1, 2])
    replies = [fakes.reply(m[1], global_w(1.0)), fakes.reply(m[2], None, refused=1)]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        checked = ReplyCheck(min_replies=2).check_train(1, replies, global_w())
    assert not checked.enough
    assert (
        "round 1: 1 usable replies, fewer than min-replies = 2; the global model "
        "stays as it was" in caplog.text
    )


def test_checked_replies_reach_central_dp_clipping_finite(fakes):
    config = from_run_config(
        {"dp-mode": "central", "noise-multiplier": 0.1, "clipping-norm": 1.0},
        fill_defaults=True,
    )
    strategy = build_strategy(config, num_nodes_hint=2)
    m = sent(strategy, fakes, [1, 2])
    nan = global_w(1.0)
    nan["w"][:] = np.nan
    replies = [fakes.reply(m[1], global_w(0.25)), fakes.reply(m[2], nan)]

    checked = ReplyCheck().check_train(1, replies, global_w())
    arrays, _ = strategy.aggregate_train(1, checked.kept)

    # without the check the NaN update would make the aggregate NaN
    assert np.isfinite(arrays["w"].numpy()).all()
    assert checked.dropped == 1


# --------------------------------------------------------------- evaluation
def test_evaluation_replies_without_weights_are_dropped(fakes, caplog):
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0)
    msgs = sent(strategy, fakes, [1, 2, 3], stage="evaluate")
    good = [fakes.reply(msgs[n], None, 10, eval_loss=float(n)) for n in (1, 2)]
    bad = Message(
        RecordDict({"metrics": MetricRecord({"eval_loss": 5.0})}), reply_to=msgs[3]
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        kept, errors = ReplyCheck().check_evaluate([*good, bad])
    assert [m.metadata.src_node_id for m in kept] == [1, 2]
    assert errors == []
    assert strategy.aggregate_evaluate(1, kept)["eval_loss"] == pytest.approx(1.5)
    assert "node 3: metric 'num-examples' is missing; evaluation dropped" in caplog.text


# ---------------------------------------------------------------- reply order
def test_replies_are_taken_in_partition_order_whatever_order_they_arrive(fakes):
    # Prepare: node IDs in the opposite order of their partitions; one error
    m = sent(fedavg(4), fakes, [40, 30, 20, 10])
    replies = [
        fakes.reply(m[10], global_w(), **{"partition-id": 3}),
        fakes.error_reply(m[30]),
        fakes.reply(m[40], global_w(), **{"partition-id": 0}),
        fakes.reply(m[20], global_w(), **{"partition-id": 2}),
    ]
    # Execute
    ordered = in_partition_order(replies)
    # Assert: the error (no partition) first, then partitions 0, 2, 3
    assert [r.metadata.src_node_id for r in ordered] == [30, 40, 20, 10]


def test_the_aggregate_does_not_depend_on_the_arrival_order(fakes):
    # Prepare: float32 values whose sum depends on the order it is taken in:
    # (1e8 + 1) - 1e8 = 0 but (1e8 - 1e8) + 1 = 1
    values = {0: 1e8, 1: 1.0, 2: -1e8}
    results = set()
    for arrival in ([0, 1, 2], [0, 2, 1], [2, 1, 0], [1, 0, 2]):
        strategy = fedavg(3)
        m = sent(strategy, fakes, [100, 101, 102])
        replies = [
            fakes.reply(m[100 + p], global_w(values[p]), **{"partition-id": p})
            for p in arrival
        ]
        # Execute
        checked = ReplyCheck().check_train(1, replies, global_w())
        arrays, _ = strategy.aggregate_train(1, checked.kept)
        results.add(arrays["w"].numpy().tobytes())
    # Assert: one aggregate, bit for bit
    assert len(results) == 1

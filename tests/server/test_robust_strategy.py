import logging
import random

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
)

from fedge.server.node_sampling import RoundAbort
from fedge.server.robust_strategy import RobustStrategy
from fedge.server.strategy_factory import build_strategy
from fedge.shared.config import from_run_config

LOGGER = "fedge.server.robust_strategy"


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def guard(strategy=None, **kwargs):
    clock = FakeClock()
    kwargs.setdefault("sampler_seed", 0)
    kwargs.setdefault("node_wait_timeout_s", 30.0)
    return RobustStrategy(
        strategy or FedAvg(fraction_evaluate=0.0),
        clock=clock,
        sleep=clock.sleep,
        **kwargs,
    )


def global_w(value=0.0):
    return {"w": np.full((2, 2), value, np.float32)}


def sampled(strategy, server_round, grid, fakes, stage="train"):
    configure = getattr(strategy, f"configure_{stage}")
    msgs = configure(server_round, fakes.record(global_w()), ConfigRecord(), grid)
    return sorted(m.metadata.dst_node_id for m in msgs)


def configure(strategy, server_round, fakes, nodes, value=0.0):
    msgs = strategy.configure_train(
        server_round,
        fakes.record(global_w(value)),
        ConfigRecord(),
        fakes.FakeGrid(nodes),
    )
    return {m.metadata.dst_node_id: m for m in msgs}


# ---------------------------------------------------------------- sampling
@pytest.mark.parametrize("seed", [0, 7, 2024])
def test_sampling_is_reproducible_from_seed_and_round(seed, fakes):
    # Prepare: 20 nodes, 5 sampled per round
    def make():
        return guard(
            FedAvg(fraction_train=0.25, fraction_evaluate=0.0), sampler_seed=seed
        )

    nodes = list(range(100, 120))
    uninterrupted = make()
    full = [
        sampled(uninterrupted, r, fakes.FakeGrid(nodes), fakes) for r in (1, 2, 3, 4)
    ]
    # Execute: a "resumed" strategy starts at round 3, with the global generator
    # in another state and the SuperLink listing nodes in another order
    resumed = make()
    random.seed(999)
    shuffled = random.sample(nodes, len(nodes))
    tail = [sampled(resumed, r, fakes.FakeGrid(shuffled), fakes) for r in (3, 4)]
    # Assert
    assert tail == full[2:]
    assert all(len(s) == 5 for s in full)
    assert len({tuple(s) for s in full}) > 1  # rounds differ from each other


def test_another_seed_samples_other_nodes(fakes):
    nodes = list(range(20))

    def picks(seed):
        g = guard(FedAvg(fraction_train=0.25, fraction_evaluate=0.0), sampler_seed=seed)
        return [sampled(g, r, fakes.FakeGrid(nodes), fakes) for r in (1, 2, 3)]

    assert picks(1) != picks(2)


def test_evaluation_sampling_is_reproducible_too(fakes):
    def make():
        return guard(FedAvg(fraction_train=1.0, fraction_evaluate=0.25), sampler_seed=3)

    nodes = list(range(20))
    a = sampled(make(), 2, fakes.FakeGrid(nodes), fakes, stage="evaluate")
    b = sampled(make(), 2, fakes.FakeGrid(nodes[::-1]), fakes, stage="evaluate")
    assert a == b and len(a) == 5


def test_too_few_nodes_aborts_the_round_after_the_timeout(fakes):
    g = guard(
        FedAvg(min_available_nodes=2, min_train_nodes=2, fraction_evaluate=0.0),
        node_wait_timeout_s=30.0,
        checkpoint_dir="runs/x/checkpoints",
    )
    with pytest.raises(
        RoundAbort,
        match=r"Only 1 of 2 nodes connected after 30 s; ending the run, "
        r"checkpoints kept in runs/x/checkpoints",
    ):
        g.configure_train(
            1, fakes.record(global_w()), ConfigRecord(), fakes.FakeGrid([1])
        )
    assert g._clock.now == pytest.approx(30.0)


def test_wait_covers_min_train_nodes_above_min_available(fakes):
    # Flower would wait for max(min_available_nodes, min_train_nodes) = 3
    g = guard(FedAvg(min_available_nodes=1, min_train_nodes=3, fraction_evaluate=0.0))
    with pytest.raises(RoundAbort, match="Only 2 of 3 nodes"):
        g.configure_train(
            1, fakes.record(global_w()), ConfigRecord(), fakes.FakeGrid([1, 2])
        )


def test_no_wait_when_the_stage_samples_nobody(fakes):
    g = guard(FedAvg(fraction_evaluate=0.0))
    assert sampled(g, 1, fakes.FakeGrid([]), fakes, stage="evaluate") == []


def test_sampling_reaches_through_the_dp_wrapper(fakes):
    config = from_run_config(
        {"dp-mode": "central", "noise-multiplier": 1.0, "fraction-train": 0.5},
        fill_defaults=True,
    )
    inner = build_strategy(config, num_nodes_hint=4)
    g = guard(inner)
    assert isinstance(g.strategy, DifferentialPrivacyServerSideFixedClipping)
    assert isinstance(g.base, FedAvg)
    assert len(sampled(g, 1, fakes.FakeGrid([1, 2, 3, 4]), fakes)) == 2


# --------------------------------------------------------------- validation
def test_bad_replies_are_dropped_one_line_each(fakes, caplog):
    # Prepare: five nodes; one good, one wrong shape, one NaN, one refusal, one error
    g = guard(FedAvg(min_available_nodes=5, min_train_nodes=5, fraction_evaluate=0.0))
    m = configure(g, 1, fakes, [1, 2, 3, 4, 5])
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
        arrays, metrics = g.aggregate_train(1, replies)
    # Assert: only node 1 was averaged
    np.testing.assert_array_equal(arrays["w"].numpy(), global_w(2.0)["w"])
    assert metrics["train_loss"] == pytest.approx(0.5)
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert lines == [
        "node 2: 'w' has shape (3,), expected (2, 2); update dropped",
        "node 3: 'w' has 1 NaN and 0 Inf values; update dropped",
        "node 4 refused to train: its privacy budget is spent; its replies are "
        "not aggregated (reported once per node)",
    ]
    stats = g.round_stats[1]
    assert {k: stats[k] for k in ("sampled", "replies", "failures")} == {
        "sampled": 5,
        "replies": 4,
        "failures": 1,
    }
    assert (stats["dropped"], stats["refused"], stats["aggregated"]) == (2, 1, 1)
    assert {c["node-id"]: c["status"] for c in stats["clients"]} == {
        1: "aggregated",
        2: "dropped",
        3: "dropped",
        4: "refused",
    }


def test_a_refusal_is_logged_once_per_node_for_the_run(fakes, caplog):
    g = guard()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for server_round in (1, 2, 3):
            m = configure(g, server_round, fakes, [1, 2])
            g.aggregate_train(
                server_round,
                [fakes.reply(m[1], global_w(1.0)), fakes.reply(m[2], None, refused=1)],
            )
    assert caplog.text.count("node 2 refused to train") == 1
    assert [g.round_stats[r]["refused"] for r in (1, 2, 3)] == [1, 1, 1]


def test_refusals_logged_survive_a_resume(fakes, caplog):
    first = guard()
    m = configure(first, 1, fakes, [1, 2])
    first.aggregate_train(
        1, [fakes.reply(m[1], global_w(1.0)), fakes.reply(m[2], None, refused=1)]
    )
    resumed = guard()
    resumed.load_state_dict(first.state_dict())
    m = configure(resumed, 2, fakes, [1, 2])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        resumed.aggregate_train(
            2, [fakes.reply(m[1], global_w(1.0)), fakes.reply(m[2], None, refused=1)]
        )
    assert "refused to train" not in caplog.text


def test_update_norm_bound_drops_far_updates(fakes, caplog):
    g = guard(max_update_norm=1.0)
    m = configure(g, 1, fakes, [1, 2])
    # node 2 moves each of 4 weights by 10: norm 20
    replies = [fakes.reply(m[1], global_w(0.1)), fakes.reply(m[2], global_w(10.0))]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        arrays, _ = g.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), 0.1)
    assert "node 2: update has L2 norm 20 from the global model, above " in caplog.text


def test_odd_metric_names_drop_one_reply_instead_of_ending_the_run(fakes, caplog):
    replies_for = {
        1: {"train_loss": 1.0},
        2: {"train_loss": 3.0},
        3: {"train_loss": 9.0, "extra": 1.0},
    }

    def make_replies(strategy):
        m = configure(strategy, 1, fakes, [1, 2, 3])
        return [fakes.reply(m[n], global_w(n), **kv) for n, kv in replies_for.items()]

    # Control: Flower alone gives up on the whole round
    plain = FedAvg(min_available_nodes=3, min_train_nodes=3, fraction_evaluate=0.0)
    with pytest.raises(InconsistentMessageReplies):
        plain.aggregate_train(1, make_replies(plain))
    # Guarded: node 3 is dropped, nodes 1 and 2 averaged
    g = guard(FedAvg(min_available_nodes=3, min_train_nodes=3, fraction_evaluate=0.0))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        arrays, metrics = g.aggregate_train(1, make_replies(g))
    np.testing.assert_allclose(arrays["w"].numpy(), 1.5)
    assert metrics["train_loss"] == pytest.approx(2.0)
    assert (
        "node 3: metrics ['extra', 'num-examples', 'train_loss'] differ" in caplog.text
    )


def test_too_few_usable_replies_keep_the_global_model(fakes, caplog):
    g = guard(min_replies=2)
    m = configure(g, 1, fakes, [1, 2])
    replies = [fakes.reply(m[1], global_w(1.0)), fakes.reply(m[2], None, refused=1)]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert g.aggregate_train(1, replies) == (None, None)
    assert (
        "round 1: 1 usable replies, fewer than min-replies = 2; the global model "
        "stays as it was" in caplog.text
    )
    assert g.round_stats[1]["aggregated"] == 0


def test_aggregate_before_configure_is_a_programming_error():
    with pytest.raises(RuntimeError, match="before configure_train"):
        guard().aggregate_train(1, [])


def test_fedadam_keeps_the_model_dtype_and_round_two_is_not_dropped(fakes, caplog):
    g = guard(FedAdam(fraction_evaluate=0.0, eta=0.1))
    value = 0.0
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for server_round in (1, 2):
            m = configure(g, server_round, fakes, [1, 2], value=value)
            replies = [fakes.reply(msg, global_w(value + 1.0)) for msg in m.values()]
            arrays, _ = g.aggregate_train(server_round, replies)
            assert arrays["w"].dtype == "float32"
            assert arrays["w"].numpy()[0, 0] > value
            value = float(arrays["w"].numpy()[0, 0])
    assert "dropped" not in caplog.text


def test_validation_runs_before_central_dp_clipping(fakes):
    config = from_run_config(
        {"dp-mode": "central", "noise-multiplier": 0.1, "clipping-norm": 1.0},
        fill_defaults=True,
    )
    g = guard(build_strategy(config, num_nodes_hint=2))
    m = configure(g, 1, fakes, [1, 2])
    nan = global_w(1.0)
    nan["w"][:] = np.nan
    arrays, _ = g.aggregate_train(
        1, [fakes.reply(m[1], global_w(0.25)), fakes.reply(m[2], nan)]
    )
    # without the guard the NaN update would make the aggregate NaN
    assert np.isfinite(arrays["w"].numpy()).all()
    assert g.round_stats[1]["dropped"] == 1


# --------------------------------------------------------------- evaluation
def test_evaluation_replies_without_weights_are_dropped(fakes, caplog):
    g = guard(FedAvg(fraction_train=1.0, fraction_evaluate=1.0))
    msgs = {
        x.metadata.dst_node_id: x
        for x in g.configure_evaluate(
            1, fakes.record(global_w()), ConfigRecord(), fakes.FakeGrid([1, 2, 3])
        )
    }
    good = [fakes.reply(msgs[n], None, 10, eval_loss=float(n)) for n in (1, 2)]
    bad = Message(
        RecordDict({"metrics": MetricRecord({"eval_loss": 5.0})}), reply_to=msgs[3]
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        metrics = g.aggregate_evaluate(1, [*good, bad])
    assert metrics["eval_loss"] == pytest.approx(1.5)
    assert "node 3: metric 'num-examples' is missing; evaluation dropped" in caplog.text
    assert g.round_stats[1]["eval-dropped"] == 1
    assert g.round_stats[1]["eval-sampled"] == 3


def test_a_non_finite_aggregate_keeps_the_global_model(fakes, caplog):
    class Overflowing(FedAvg):
        """Aggregates like FedAvg, then overflows as a diverging optimiser would."""

        def aggregate_train(self, server_round, replies):
            arrays, metrics = super().aggregate_train(server_round, replies)
            arrays["w"] = type(arrays["w"])(arrays["w"].numpy() * np.inf)
            return arrays, metrics

    g = guard(Overflowing(fraction_evaluate=0.0))
    m = configure(g, 1, fakes, [1, 2])
    replies = [fakes.reply(m[1], global_w(1.0)), fakes.reply(m[2], global_w(2.0))]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        arrays, _ = g.aggregate_train(1, replies)
    assert arrays is None
    assert (
        "round 1: the aggregate is not finite ('w' has 4 non-finite values)"
        in caplog.text
    )
    assert g.round_stats[1]["aggregated"] == 0


# ---------------------------------------------------------------- reply order
def test_replies_are_taken_in_partition_order_whatever_order_they_arrive(fakes):
    # Prepare: node IDs in the opposite order of their partitions; one error
    from fedge.server.robust_strategy import in_partition_order

    g = guard(FedAvg(min_available_nodes=4, min_train_nodes=4, fraction_evaluate=0.0))
    m = configure(g, 1, fakes, [40, 30, 20, 10])
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
        g = guard(
            FedAvg(min_available_nodes=3, min_train_nodes=3, fraction_evaluate=0.0)
        )
        m = configure(g, 1, fakes, [100, 101, 102])
        replies = [
            fakes.reply(m[100 + p], global_w(values[p]), **{"partition-id": p})
            for p in arrival
        ]
        # Execute
        arrays, _ = g.aggregate_train(1, replies)
        results.add(arrays["w"].numpy().tobytes())
    # Assert: one aggregate, bit for bit
    assert len(results) == 1

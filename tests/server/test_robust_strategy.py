import logging
import random

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
)

from fedge.server.node_sampling import RoundAbort
from fedge.server.reply_check import ReplyCheck
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


# ---------------------------------------------------------------- aggregation
def test_aggregate_before_configure_is_a_programming_error():
    with pytest.raises(RuntimeError, match="before configure_train"):
        guard().aggregate_train(1, [])


def test_fedadam_keeps_the_model_dtype_and_round_two_is_not_dropped(fakes):
    g = guard(FedAdam(fraction_evaluate=0.0, eta=0.1))
    checks = ReplyCheck()
    value = 0.0
    for server_round in (1, 2):
        m = configure(g, server_round, fakes, [1, 2], value=value)
        replies = [fakes.reply(msg, global_w(value + 1.0)) for msg in m.values()]
        # Round 2's float32 replies fit the global arrays round 1 left.
        checked = checks.check_train(server_round, replies, global_w(value))
        assert len(checked.kept) == 2
        arrays, _ = g.aggregate_train(server_round, checked.kept)
        assert arrays["w"].dtype == "float32"
        assert arrays["w"].numpy()[0, 0] > value
        value = float(arrays["w"].numpy()[0, 0])
        assert global_w(value)["w"].dtype == arrays["w"].numpy().dtype


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

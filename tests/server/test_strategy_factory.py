import dataclasses
import itertools
import logging

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
)
from scipy import stats

from fedge.server.strategy_factory import build_strategy, planned_sample_size
from fedge.shared.config import STRATEGIES, from_run_config
from fedge.shared.errors import ConfigError
from fedge.shared.keys import GLOBAL_MODEL_LOSS as GML

EXPECTED_CLASS = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
    "multikrum": MultiKrum,
    "bulyan": Bulyan,
    "qfedavg": QFedAvg,
}


def make_config(**overrides):
    return from_run_config(overrides, fill_defaults=True)


def run_round(
    strategy,
    server_round,
    arrays,
    grid,
    fakes,
    values,
    num_examples=None,
    shape=(2, 2),
):
    """One train round: every sampled node replies with its value from ``values``.

    ``values[i]`` goes to the i-th sampled node in node-id order, so the outcome
    does not depend on which order Flower sampled them in. Each reply is ``w``,
    of ``shape``, filled with that value.
    """
    messages = sorted(
        strategy.configure_train(server_round, arrays, ConfigRecord(), grid),
        key=lambda m: m.metadata.dst_node_id,
    )
    assert len(messages) == len(values)
    num_examples = num_examples or [10] * len(values)
    # Every reply carries what q-FedAvg weighs it by (other strategies ignore it).
    replies = [
        fakes.reply(m, {"w": np.full(shape, v, np.float32)}, n, **{GML: 1.0})
        for m, v, n in zip(messages, values, num_examples, strict=True)
    ]
    new_arrays, _ = strategy.aggregate_train(server_round, replies)
    return new_arrays, messages


# ------------------------------------------------------------------ every name
@pytest.mark.parametrize("name", STRATEGIES)
def test_each_strategy_builds_and_aggregates_two_rounds(name, fakes):
    # Prepare: 7 nodes, enough for every robust aggregator with f = 0
    config = make_config(**{"strategy": name, "min-nodes": 7})
    strategy = build_strategy(config, num_nodes_hint=7)
    grid = fakes.FakeGrid(range(1, 8))
    arrays = fakes.record({"w": np.zeros((2, 2), np.float32)})
    history = [arrays["w"].numpy().copy()]
    # Execute: two rounds, clients move the weights up by ~1 each round
    for server_round in (1, 2):
        base = history[-1][0, 0]
        values = [base + 1.0 + 0.01 * i for i in range(7)]
        arrays, _ = run_round(strategy, server_round, arrays, grid, fakes, values)
        assert arrays is not None, f"{name} skipped round {server_round}"
        history.append(arrays["w"].numpy().copy())
    # Assert
    assert isinstance(strategy, EXPECTED_CLASS[name])
    for before, after in itertools.pairwise(history):
        # dtype is not checked: Flower's FedOpt family returns float64 (the
        # RobustStrategy wrapper casts back, see test_robust_strategy.py)
        assert after.shape == (2, 2)
        assert np.all(after > before), f"{name} did not move towards the updates"


def test_qfedavg_steps_towards_the_worse_served_node_where_fedavg_does_not(fakes):
    # Prepare: two nodes of equal size pull w = 0 to +1 and -1; the second one's
    # data has 20 times the loss. Client learning rate 0.05, so Flower's
    # Lipschitz estimate is L = 1 / 0.05 = 20.
    arrays = fakes.record({"w": np.zeros(1, np.float32)})
    grid = fakes.FakeGrid([1, 2])
    updates, losses = {1: 1.0, 2: -1.0}, {1: 0.1, 2: 2.0}

    def aggregate(name):
        strategy = build_strategy(
            make_config(
                **{
                    "strategy": name,
                    "qffl-q": 1.0,
                    "learning-rate": 0.05,
                    "momentum": 0.0,
                }
            )
        )
        messages = strategy.configure_train(1, arrays, ConfigRecord(), grid)
        replies = [
            fakes.reply(
                m,
                {"w": np.full(1, updates[m.metadata.dst_node_id], np.float32)},
                **{GML: losses[m.metadata.dst_node_id]},
            )
            for m in messages
        ]
        new_arrays, _ = strategy.aggregate_train(1, replies)
        return float(new_arrays["w"].numpy()[0])

    # Execute
    fedavg, qfedavg = aggregate("fedavg"), aggregate("qfedavg")

    # Assert: q-FFL (Li et al. 2020, q = 1) by hand. Node k's gradient estimate
    # is g_k = L (w - w_k), so delta_k = F_k g_k and
    # h_k = q F_k^(q-1) ||g_k||^2 + L F_k = 400 + 20 F_k:
    # delta = (-20 * 0.1, 20 * 2.0) = (-2, 40), h = (402, 440),
    # w' = 0 - (-2 + 40) / (402 + 440).
    assert fedavg == pytest.approx(0.0)
    assert qfedavg == pytest.approx(-38 / 842, rel=1e-6)


def test_qfedavg_takes_q_and_the_clients_step_size_from_the_config():
    strategy = build_strategy(
        make_config(
            **{
                "strategy": "qfedavg",
                "qffl-q": 2.5,
                "learning-rate": 0.1,
                "momentum": 0.75,
            }
        )
    )
    # SGD with momentum 0.75 steps 0.1 / (1 - 0.75) = 0.4 per gradient.
    assert strategy.q == 2.5
    assert strategy.client_learning_rate == pytest.approx(0.4)
    assert strategy.train_loss_key == GML


def test_fedprox_sends_mu_to_clients(fakes):
    config = make_config(**{"strategy": "fedprox", "proximal-mu": 0.25})
    strategy = build_strategy(config)
    messages = strategy.configure_train(
        1, fakes.record({"w": np.zeros(1)}), ConfigRecord(), fakes.FakeGrid([1, 2])
    )
    assert [m.content["config"]["proximal-mu"] for m in messages] == [0.25, 0.25]


def test_min_nodes_and_fractions_reach_flower():
    config = make_config(
        **{"min-nodes": 3, "fraction-train": 0.5, "fraction-evaluate": 0.25}
    )
    s = build_strategy(config)
    assert (s.min_train_nodes, s.min_evaluate_nodes, s.min_available_nodes) == (3, 3, 3)
    assert (s.fraction_train, s.fraction_evaluate) == (0.5, 0.25)


def test_fedopt_parameters_are_passed():
    config = make_config(
        **{
            "strategy": "fedyogi",
            "server-learning-rate": 0.05,
            "server-momentum-beta1": 0.8,
            "server-momentum-beta2": 0.95,
            "tau": 0.01,
        }
    )
    s = build_strategy(config)
    assert (s.eta, s.beta_1, s.beta_2, s.tau) == (0.05, 0.8, 0.95, 0.01)
    adagrad = build_strategy(
        dataclasses.replace(
            config, strategy=dataclasses.replace(config.strategy, name="fedadagrad")
        )
    )
    assert (adagrad.eta, adagrad.tau) == (0.05, 0.01)


# -------------------------------------------------- hand-computed aggregations
def test_fedavg_weights_by_num_examples(fakes):
    strategy = build_strategy(make_config())
    arrays = fakes.record({"w": np.zeros((2, 2), np.float32)})
    # (2 * 1 + 6 * 3) / 4 = 5
    out, _ = run_round(
        strategy, 1, arrays, fakes.FakeGrid([1, 2]), fakes, [2.0, 6.0], [1, 3]
    )
    np.testing.assert_allclose(out["w"].numpy(), 5.0)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # median of -50, 1, 2, 6, 100
        ({"strategy": "fedmedian"}, 2.0),
        # beta 0.2 of 5 cuts one from each end: (1 + 2 + 6) / 3
        ({"strategy": "fedtrimmedavg", "trim-beta": 0.2}, 3.0),
    ],
)
def test_coordinate_wise_aggregators(overrides, expected, fakes):
    strategy = build_strategy(make_config(**{**overrides, "min-nodes": 5}))
    arrays = fakes.record({"w": np.zeros((2, 2), np.float32)})
    values = [1.0, 100.0, 2.0, -50.0, 6.0]
    out, _ = run_round(strategy, 1, arrays, fakes.FakeGrid(range(1, 6)), fakes, values)
    np.testing.assert_allclose(out["w"].numpy(), expected)


def test_krum_picks_the_most_central_update(fakes):
    # f = 1, n = 5: score = sum of squared distances to the n - f - 2 = 2 nearest.
    # Per coordinate (4 coordinates, same factor): 1.0 -> .0025 + .0144,
    # 1.05 -> .0025 + .0049 (lowest), 1.12 -> .0049 + .0144, 0.7 and 50 far away.
    config = make_config(
        **{"strategy": "krum", "min-nodes": 5, "num-malicious-nodes": 1}
    )
    strategy = build_strategy(config)
    arrays = fakes.record({"w": np.zeros((2, 2), np.float32)})
    values = [1.0, 1.12, 0.7, 1.05, 50.0]
    out, _ = run_round(strategy, 1, arrays, fakes.FakeGrid(range(1, 6)), fakes, values)
    np.testing.assert_allclose(out["w"].numpy(), 1.05, rtol=1e-6)


def test_multikrum_averages_the_selected_updates(fakes):
    # Same scores as above: the two lowest are 1.05 and 1.0 -> mean 1.025
    config = make_config(
        **{
            "strategy": "multikrum",
            "min-nodes": 5,
            "num-malicious-nodes": 1,
            "num-nodes-to-select": 2,
        }
    )
    strategy = build_strategy(config)
    arrays = fakes.record({"w": np.zeros((2, 2), np.float32)})
    values = [1.0, 1.12, 0.7, 1.05, 50.0]
    out, _ = run_round(strategy, 1, arrays, fakes.FakeGrid(range(1, 6)), fakes, values)
    np.testing.assert_allclose(out["w"].numpy(), 1.025, rtol=1e-6)


def test_bulyan_ignores_an_outlier(fakes):
    # f = 1 needs n >= 7; the plain mean would be pulled to about 7.9
    config = make_config(
        **{"strategy": "bulyan", "min-nodes": 7, "num-malicious-nodes": 1}
    )
    strategy = build_strategy(config)
    arrays = fakes.record({"w": np.zeros((2, 2), np.float32)})
    values = [1.0, 1.12, 0.7, 1.05, 0.95, 1.2, 50.0]
    out, _ = run_round(strategy, 1, arrays, fakes.FakeGrid(range(1, 8)), fakes, values)
    assert np.all((out["w"].numpy() >= 0.7) & (out["w"].numpy() <= 1.2))


# Central DP: 10 000 coordinates, so the noise's scale is known to ~0.7 % and
# its shape can be tested (4 coordinates "within 5σ" would pass a 2× error).
CENTRAL_SHAPE = (100, 100)


def _central_dp_round(fakes, seed):
    """Two nodes send w = 1 everywhere (update norm 100) under clipping norm 50.

    Each update is clipped to norm 50, i.e. 0.5 per coordinate; their mean is
    0.5; Flower adds N(0, (σ·C/m)²) with σ = 0.01, C = 50, m = 2: std 0.25.
    """
    config = make_config(
        **{"dp-mode": "central", "noise-multiplier": 0.01, "clipping-norm": 50.0}
    )
    strategy = build_strategy(config, num_nodes_hint=2)
    np.random.seed(seed)  # Flower draws the noise from NumPy's global generator
    arrays = fakes.record({"w": np.zeros(CENTRAL_SHAPE, np.float32)})
    out, _ = run_round(
        strategy,
        1,
        arrays,
        fakes.FakeGrid([1, 2]),
        fakes,
        [1.0, 1.0],
        shape=CENTRAL_SHAPE,
    )
    return strategy, out["w"].numpy().astype(np.float64).ravel()


def assert_gaussian(values, *, mean, std):
    """``values`` are draws of N(mean, std²): mean, spread and shape."""
    n = len(values)
    assert abs(values.mean() - mean) < 5 * std / n**0.5  # 0.0125 here
    # The sample std's relative error is ~1/sqrt(2n) = 0.7 %: 5 % is 7 of them,
    # and a factor 2 either way is 100 % or 50 % off.
    assert values.std() == pytest.approx(std, rel=0.05)
    assert stats.kstest(values, "norm", args=(mean, std)).pvalue > 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_central_dp_clips_updates_and_adds_noise_of_std_sigma_c_over_m(fakes, seed):
    strategy, w = _central_dp_round(fakes, seed)

    assert isinstance(strategy, DifferentialPrivacyServerSideFixedClipping)
    assert strategy.num_sampled_clients == 2
    assert w.size == 10_000
    # Clipped mean 0.5 (unclipped: 1.0) plus N(0, 0.25²) on every coordinate.
    assert_gaussian(w, mean=0.5, std=0.25)


@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_a_central_noise_scale_off_by_two_fails_the_check(fakes, factor):
    # The check above is meaningful: the same draws with twice (or half) the
    # noise around the same clipped mean are refused.
    _, w = _central_dp_round(fakes, seed=0)
    wrong = 0.5 + factor * (w - 0.5)
    with pytest.raises(AssertionError):
        assert_gaussian(wrong, mean=0.5, std=0.25)
    assert stats.kstest(wrong, "norm", args=(0.5, 0.25)).pvalue < 1e-6


def test_planned_sample_size():
    st = make_config(**{"min-nodes": 2, "fraction-train": 0.5}).strategy
    assert planned_sample_size(st, None) == 2
    assert planned_sample_size(st, 10) == 5
    assert planned_sample_size(st, 3) == 2  # int(1.5) = 1 < min-nodes


# ------------------------------------------------------------------ refusals
def _with(config, **strategy_fields):
    return dataclasses.replace(
        config, strategy=dataclasses.replace(config.strategy, **strategy_fields)
    )


def test_unknown_name_lists_valid_ones():
    config = _with(make_config(), name="fedsgd")
    with pytest.raises(
        ConfigError, match=r"must be one of \['fedavg', 'fedprox'.*got 'fedsgd'"
    ):
        build_strategy(config)


def test_bulyan_needs_4f_plus_3_nodes():
    config = make_config(
        **{"strategy": "bulyan", "min-nodes": 6, "num-malicious-nodes": 1}
    )
    with pytest.raises(
        ConfigError,
        match=r"bulyan needs at least 4 \* num-malicious-nodes \+ 3 = 7 nodes per "
        r"round, got 6 \(min-nodes = 6\)",
    ):
        build_strategy(config)


def test_bulyan_counts_the_nodes_the_hint_promises():
    config = make_config(
        **{"strategy": "bulyan", "min-nodes": 3, "num-malicious-nodes": 1}
    )
    assert isinstance(build_strategy(config, num_nodes_hint=8), Bulyan)


@pytest.mark.parametrize("name", ["krum", "multikrum"])
def test_krum_needs_2f_plus_3_nodes(name):
    config = make_config(**{"strategy": name, "min-nodes": 2})
    with pytest.raises(
        ConfigError, match=rf"{name} needs at least 2 \* num-malicious-nodes \+ 3 = 3"
    ):
        build_strategy(config)


def test_multikrum_cannot_select_more_than_n_minus_f():
    config = make_config(
        **{
            "strategy": "multikrum",
            "min-nodes": 5,
            "num-malicious-nodes": 1,
            "num-nodes-to-select": 5,
        }
    )
    with pytest.raises(ConfigError, match=r"'num-nodes-to-select' = 5 exceeds .* = 4"):
        build_strategy(config)


def test_fewer_nodes_than_min_nodes_is_refused():
    with pytest.raises(ConfigError, match=r"'min-nodes' = 3 but the federation has 2"):
        build_strategy(make_config(**{"min-nodes": 3}), num_nodes_hint=2)


def test_all_problems_are_reported_together():
    config = make_config(
        **{"strategy": "bulyan", "min-nodes": 3, "num-malicious-nodes": 1}
    )
    with pytest.raises(ConfigError) as info:
        build_strategy(config, num_nodes_hint=2)
    assert "federation has 2" in str(info.value)
    assert "bulyan needs" in str(info.value)


def test_central_dp_with_robust_aggregator_is_refused():
    config = make_config(**{"dp-mode": "central", "noise-multiplier": 1.0})
    config = _with(config, name="fedmedian")
    with pytest.raises(ConfigError, match="does not compose with 'fedmedian'"):
        build_strategy(config)


def test_flower_value_errors_become_config_errors():
    config = _with(make_config(**{"strategy": "fedtrimmedavg"}), trim_beta=0.6)
    with pytest.raises(ConfigError, match=r"Flower refused strategy 'fedtrimmedavg'"):
        build_strategy(config)


def test_trimmed_mean_that_trims_nothing_warns(caplog):
    config = make_config(**{"strategy": "fedtrimmedavg", "trim-beta": 0.2})
    with caplog.at_level(logging.WARNING, logger="fedge.server.strategy_factory"):
        build_strategy(config)  # 2 nodes: int(0.4) = 0
    assert "computes the plain mean" in caplog.text

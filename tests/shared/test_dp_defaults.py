"""The budget-aware rule behind the DP defaults, and how the config applies it."""

from __future__ import annotations

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from fedge.shared.config import default_run_config, from_run_config
from fedge.shared.dp_defaults import (
    auto_learning_rate,
    suggest_dp_training,
)
from fedge.shared.errors import ConfigError
from fedge.shared.privacy_plan import local_schedule, plan_for_config

BUDGET = {
    "rounds": 10,
    "target_epsilon": 8.0,
    "target_delta": 0.0,
    "noise_multiplier": 0.0,
    "accountant": "rdp",
}


def _sample_config(**overrides):
    return from_run_config({"dp-mode": "sample", **overrides}, fill_defaults=True)


@pytest.mark.parametrize("n", [2, 121, 405, 1024])
def test_a_small_node_trains_on_all_its_data_four_steps_a_round(n):
    schedule = suggest_dp_training(num_examples=n, **BUDGET)

    # q = 1: one step an epoch, so 4 epochs are the 4 steps.
    assert (schedule.batch_size, schedule.local_epochs) == (n, 4)


def test_a_large_node_takes_batches_of_1024():
    # n = 5000, 5 rounds, ε = 8: q = 1024/5000, round(5000/1024) = 5 steps an
    # epoch, so 1 epoch; σ = 1.03 >= 1, so the batch does not grow.
    schedule = suggest_dp_training(num_examples=5000, **{**BUDGET, "rounds": 5})

    assert (schedule.batch_size, schedule.local_epochs) == (1024, 1)
    sigma = get_noise_multiplier(
        target_epsilon=8.0,
        target_delta=1e-5,
        sample_rate=1024 / 5000,
        steps=25,
        accountant="rdp",
    )
    assert sigma >= 1.0


def test_a_large_node_grows_its_batch_until_sigma_reaches_one():
    # 30,000 examples, ε = 8 over 5 rounds: σ is 0.73 at batch 1024, 0.84 at
    # 2048, 0.98 at 4096 and 1.22 at 8192 (4 steps an epoch, 1 epoch a round).
    schedule = suggest_dp_training(num_examples=30_000, **{**BUDGET, "rounds": 5})

    def sigma(batch):
        steps_per_epoch = round(30_000 / batch)
        return get_noise_multiplier(
            target_epsilon=8.0,
            target_delta=1e-6,
            sample_rate=batch / 30_000,
            steps=steps_per_epoch * max(1, round(4 / steps_per_epoch)) * 5,
            accountant="rdp",
        )

    assert (schedule.batch_size, schedule.local_epochs) == (8192, 1)
    assert sigma(8192) >= 1.0 > sigma(4096)


def test_a_configured_sigma_keeps_the_first_batch():
    schedule = suggest_dp_training(
        num_examples=30_000, **{**BUDGET, "rounds": 5, "noise_multiplier": 0.5}
    )

    assert schedule.batch_size == 1024


@pytest.mark.parametrize(
    ("n", "epsilon", "accountant"),
    [
        *((n, e, "rdp") for n in (50, 121, 405, 3000) for e in (1.0, 3.0, 8.0)),
        (121, 3.0, "prv"),
        (405, 8.0, "prv"),
    ],
)
def test_the_suggested_settings_spend_at_most_the_target(n, epsilon, accountant):
    config = _sample_config(
        **{"target-epsilon": epsilon, "num-server-rounds": 10, "accountant": accountant}
    )
    plan = plan_for_config(config=config, num_examples=n)

    reference = {"rdp": RDPAccountant, "prv": PRVAccountant}[accountant]()
    reference.history = [
        (plan.noise_multiplier, plan.sample_rate, plan.steps_per_round * 10)
    ]
    assert reference.get_epsilon(delta=plan.delta) <= epsilon


def test_settings_the_user_gives_win_over_the_rule():
    config = _sample_config(**{"batch-size": 64, "local-epochs": 3})

    schedule = local_schedule(config, num_examples=121)

    assert (schedule.batch_size, schedule.local_epochs) == (64, 3)


def test_a_given_batch_still_gets_the_rules_epochs():
    # Batch 30 of 121 examples: round(121/30) = 4 steps an epoch, so 1 epoch.
    schedule = local_schedule(_sample_config(**{"batch-size": 30}), num_examples=121)

    assert (schedule.batch_size, schedule.local_epochs) == (30, 1)


def test_under_dp_auto_means_tanh_and_a_step_of_half_the_clipping_norm():
    config = _sample_config(**{"max-grad-norm": 2.0})

    assert config.train.activation == "tanh"
    assert config.train.learning_rate == 0.25  # 0.5 / C


def test_given_learning_rate_and_activation_win_under_dp():
    config = _sample_config(**{"learning-rate": 0.1, "activation": "relu"})

    assert (config.train.learning_rate, config.train.activation) == (0.1, "relu")


@pytest.mark.parametrize("mode", ["none", "central"])
def test_without_sample_dp_auto_means_the_plain_defaults(mode):
    extra = {"noise-multiplier": 1.0} if mode == "central" else {}
    config = from_run_config({"dp-mode": mode, **extra}, fill_defaults=True)

    schedule = local_schedule(config, num_examples=121)

    assert (schedule.batch_size, schedule.local_epochs) == (32, 5)
    assert (config.train.learning_rate, config.train.activation) == (0.05, "relu")


def test_the_defaults_are_auto_in_pyproject():
    defaults = default_run_config()

    assert {
        k: defaults[k]
        for k in ("activation", "batch-size", "local-epochs", "learning-rate")
    } == dict.fromkeys(
        ("activation", "batch-size", "local-epochs", "learning-rate"), "auto"
    )


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            {"num_examples": 0},
            r"The DP defaults need the node's example count >= 1, got 0\.",
        ),
        ({"rounds": 0}, r"The DP defaults need rounds >= 1, got 0\."),
    ],
)
def test_invalid_counts_are_refused(change, match):
    with pytest.raises(ConfigError, match=match):
        suggest_dp_training(**{"num_examples": 121, **BUDGET, **change})


def test_no_learning_rate_for_a_clipping_norm_of_zero():
    with pytest.raises(
        ConfigError,
        match=r"'max-grad-norm' must be > 0 to choose the learning rate, got 0\.0\.",
    ):
        auto_learning_rate(dp_mode="sample", max_grad_norm=0.0)


def test_the_config_reports_a_bad_clipping_norm_instead_of_failing_on_auto():
    with pytest.raises(ConfigError, match=r"'max-grad-norm' must be > 0, got 0\.0"):
        _sample_config(**{"max-grad-norm": 0.0})


def test_an_auto_typo_is_reported_with_the_choice():
    with pytest.raises(
        ConfigError, match=r"'batch-size' must be int or 'auto', got 'Auto'"
    ):
        _sample_config(**{"batch-size": "Auto"})


def test_a_batch_size_the_user_sets_gets_the_plain_learning_rate_under_dp():
    # The rule's rate (0.5 / C) goes with its few full-batch steps; a user's
    # small batch takes many steps, which that rate makes diverge.
    rule = _sample_config(**{"max-grad-norm": 2.0})
    chosen = _sample_config(**{"max-grad-norm": 2.0, "batch-size": 8})
    assert rule.train.learning_rate == 0.25
    assert chosen.train.learning_rate == 0.05
    assert (
        _sample_config(**{"batch-size": 8, "learning-rate": 0.3}).train.learning_rate
        == 0.3
    )

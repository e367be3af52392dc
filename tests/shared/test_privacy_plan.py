import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from fedge.shared.config import default_run_config, from_run_config
from fedge.shared.errors import ConfigError
from fedge.shared.privacy_plan import PrivacyPlan, plan_for_config, plan_privacy

SCHEDULE = {
    "num_examples": 150,
    "batch_size": 32,
    "local_epochs": 2,
    "rounds": 3,
    "target_epsilon": 8.0,
    "target_delta": 0.0,
    "accountant": "rdp",
}


def test_a_fixed_sigma_plan_by_hand():
    # q = 32/150; 150/32 = 4.69 → 5 steps per epoch, 2 epochs → 10 per round;
    # δ: 10·150 = 1500 → 1e-4.
    plan = plan_privacy(**SCHEDULE, noise_multiplier=1.1)
    assert plan == PrivacyPlan(
        noise_multiplier=1.1,
        sample_rate=32 / 150,
        steps_per_round=10,
        rounds=3,
        delta=1e-4,
        accountant="rdp",
    )
    assert plan.round_entry == (1.1, 32 / 150, 10)
    assert plan.total_steps == 30


def test_steps_per_epoch_are_round_one_over_q_not_the_ceiling():
    # n = 100, batch 30: q = 0.3, 1/q = 3.33 → 3 steps (⌈100/30⌉ would be 4).
    plan = plan_privacy(
        **(SCHEDULE | {"num_examples": 100, "batch_size": 30, "local_epochs": 1}),
        noise_multiplier=1.0,
    )
    assert plan.steps_per_round == 3


def test_sigma_zero_is_calibrated_by_opacus_for_every_planned_step():
    plan = plan_privacy(**SCHEDULE, noise_multiplier=0.0)
    expected = get_noise_multiplier(
        target_epsilon=8.0,
        target_delta=1e-4,
        sample_rate=32 / 150,
        steps=30,
        accountant="rdp",
    )
    assert plan.noise_multiplier == pytest.approx(expected, rel=1e-12)
    accountant = RDPAccountant()
    accountant.history = [plan.round_entry] * 3
    assert 7.9 <= accountant.get_epsilon(delta=1e-4) <= 8.0


def test_the_run_config_plan_is_the_same_function():
    config = from_run_config(
        default_run_config()
        | {"noise-multiplier": 0.9, "batch-size": 16, "local-epochs": 3}
    )
    plan = plan_for_config(config=config, num_examples=200)
    assert plan == plan_privacy(
        num_examples=200,
        batch_size=16,
        local_epochs=3,
        rounds=config.run.num_server_rounds,
        noise_multiplier=0.9,
        target_epsilon=config.dp.target_epsilon,
        target_delta=config.dp.target_delta,
        accountant=config.dp.accountant,
    )


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"rounds": 0}, r"rounds must be an integer >= 1, got 0"),
        ({"local_epochs": 1.5}, r"local_epochs must be an integer >= 1, got 1.5"),
        ({"noise_multiplier": -1.0}, r"noise_multiplier must be >= 0, got -1.0"),
        ({"num_examples": 0}, r"num_examples must be >= 1 to choose δ, got 0"),
        ({"target_delta": 0.5}, r"δ = 0.5 is not below 1/n"),
    ],
)
def test_bad_plans_are_refused(change, match):
    with pytest.raises(ConfigError, match=match):
        plan_privacy(**(SCHEDULE | {"noise_multiplier": 1.0} | change))

import math

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from fedge.shared.errors import ConfigError
from fedge.shared.privacy import (
    calibrate_noise_multiplier,
    check_delta,
    default_delta,
    epsilon_for,
    epsilon_schedule,
    plan_sampling,
    rdp_curve,
    resolve_delta,
)

ORDERS = RDPAccountant.DEFAULT_ALPHAS


def direct_rdp_epsilon(entries, delta):
    """ε straight from Opacus's RDP analysis functions (the independent reference)."""
    rdp = sum(
        compute_rdp(q=q, noise_multiplier=s, steps=t, orders=ORDERS)
        for s, q, t in entries
    )
    return get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)[0]


def test_rdp_epsilon_matches_opacus_reference_value():
    # Opacus's own test (opacus/tests/accountants_test.py, test_rdp_accountant):
    # σ = 1.5, q = 0.04, 90 epochs = 2250 steps, δ = 1e-5 → ε = 7.32911117143.
    eps = epsilon_for(history=[(1.5, 0.04, 2250)], delta=1e-5, accountant="rdp")
    assert eps == pytest.approx(7.32911117143, abs=1e-9)


def test_prv_epsilon_matches_opacus_reference_value():
    # Same plan, opacus/tests/accountants_test.py test_prv_accountant: 6.7774 (the
    # PRV accountant's ε is an upper bound with eps_error 0.01).
    eps = epsilon_for(history=[(1.5, 0.04, 2250)], delta=1e-5, accountant="prv")
    assert eps == pytest.approx(6.777395712150674, abs=0.01)


def test_heterogeneous_history_matches_direct_rdp_composition():
    history = [(1.2, 0.1, 30), (0.8, 0.05, 40), (2.0, 0.2, 10)]
    expected = direct_rdp_epsilon(history, 1e-5)
    assert epsilon_for(history=history, delta=1e-5) == pytest.approx(
        expected, rel=1e-12
    )


def test_prv_history_split_into_rounds_equals_one_entry():
    one = epsilon_for(history=[(1.1, 0.2, 25)], delta=1e-4, accountant="prv")
    split = epsilon_for(
        history=[(1.1, 0.2, 10), (1.1, 0.2, 15)], delta=1e-4, accountant="prv"
    )
    acct = PRVAccountant()
    acct.history = [(1.1, 0.2, 25)]
    assert split == one == pytest.approx(acct.get_epsilon(delta=1e-4))


def test_empty_history_is_zero_and_noiseless_step_is_infinite():
    assert epsilon_for(history=[], delta=1e-5) == 0.0
    assert epsilon_for(history=[(1.0, 0.1, 0)], delta=1e-5) == 0.0
    assert epsilon_for(history=[(1.0, 0.1, 5), (0.0, 0.1, 1)], delta=1e-5) == math.inf


@pytest.mark.parametrize(
    ("history", "delta", "accountant", "match"),
    [
        (
            [(1.0, 0.1, 5)],
            1e-5,
            "gdp",
            r"accountant must be one of \['rdp', 'prv'\], got 'gdp'",
        ),
        ([(1.0, 0.1, 5)], 0.0, "rdp", r"δ must be in \(0, 1\), got 0.0"),
        ([(1.0, 0.1, 5)], 1.0, "rdp", r"δ must be in \(0, 1\), got 1.0"),
        (
            [(-1.0, 0.1, 5)],
            1e-5,
            "rdp",
            r"history entry 0: noise_multiplier must be finite and >= 0, got -1.0",
        ),
        (
            [(1.0, 0.0, 5)],
            1e-5,
            "rdp",
            r"history entry 0: sample_rate must be in \(0, 1\], got 0.0",
        ),
        ([(1.0, 1.5, 5)], 1e-5, "rdp", r"sample_rate must be in \(0, 1\], got 1.5"),
        ([(1.0, 0.1, 2.5)], 1e-5, "rdp", r"steps must be an integer >= 0, got 2.5"),
        (
            [(1.0, 0.1)],
            1e-5,
            "rdp",
            r"history entry 0 must be \(noise_multiplier, sample_rate, steps\)",
        ),
    ],
)
def test_epsilon_for_rejects_bad_input(history, delta, accountant, match):
    with pytest.raises(ConfigError, match=match):
        epsilon_for(history=history, delta=delta, accountant=accountant)


@pytest.mark.parametrize("target", [1.0, 8.0])
def test_calibrated_noise_reaches_target_from_below(target):
    sigma = calibrate_noise_multiplier(
        target_epsilon=target, target_delta=1e-5, sample_rate=0.05, steps=200
    )
    eps = direct_rdp_epsilon([(sigma, 0.05, 200)], 1e-5)
    # Opacus's binary search stops within 0.01 below the target.
    assert target - 0.01 <= eps <= target


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_epsilon": 0.0}, r"target ε must be > 0, got 0.0"),
        ({"target_delta": 1.0}, r"δ must be in \(0, 1\)"),
        ({"sample_rate": 0.0}, r"sample_rate must be in \(0, 1\], got 0.0"),
        ({"steps": 0}, r"steps must be an integer >= 1, got 0"),
        ({"accountant": "x"}, r"accountant must be one of"),
        (
            {"target_epsilon": 1e-9, "sample_rate": 1.0, "steps": 1},
            r"No noise multiplier reaches ε = 1e-09 .* raise target-epsilon",
        ),
    ],
)
def test_calibrate_rejects_bad_or_impossible_targets(kwargs, match):
    args = {
        "target_epsilon": 3.0,
        "target_delta": 1e-5,
        "sample_rate": 0.1,
        "steps": 10,
        "accountant": "rdp",
    } | kwargs
    with pytest.raises(ConfigError, match=match):
        calibrate_noise_multiplier(**args)


@pytest.mark.parametrize(
    ("n", "expected"), [(1, 0.1), (100, 1e-3), (150, 1e-4), (1797, 1e-5), (60000, 1e-6)]
)
def test_default_delta_is_power_of_ten_at_most_a_tenth_of_one_over_n(n, expected):
    delta = default_delta(n)
    assert delta == expected
    assert delta <= 1 / (10 * n) * (1 + 1e-12)
    assert delta > 1 / (100 * n)


def test_delta_not_below_one_over_n_is_refused():
    with pytest.raises(
        ConfigError,
        match=r"δ = 0.01 is not below 1/n = 0.0067 for 150 examples; .*target-delta = 0 "
        r"to use 0.0001",
    ):
        check_delta(0.01, num_examples=150)


def test_resolve_delta():
    assert resolve_delta(0.0, 150) == 1e-4
    assert resolve_delta(1e-5, 150) == 1e-5
    with pytest.raises(ConfigError, match="not below 1/n"):
        resolve_delta(1 / 150, 150)
    with pytest.raises(
        ConfigError, match=r"num_examples must be >= 1 to choose δ, got 0"
    ):
        default_delta(0)


@pytest.mark.parametrize(
    ("n", "batch", "rate", "per_epoch"),
    [
        (150, 32, 32 / 150, 5),  # 150 / 32 = 4.69 steps → 5
        (1000, 1, 0.001, 1000),
        (100, 40, 0.4, 2),  # 1 / 0.4 = 2.5 → 2 (round half to even)
        (10, 32, 1.0, 1),  # batch larger than the data: every example, every step
    ],
)
def test_plan_sampling(n, batch, rate, per_epoch):
    assert plan_sampling(num_examples=n, batch_size=batch) == (
        pytest.approx(rate),
        per_epoch,
    )


def test_plan_sampling_rejects_empty_data():
    with pytest.raises(ConfigError, match="num_examples must be >= 1, got 0"):
        plan_sampling(num_examples=0, batch_size=4)
    with pytest.raises(ConfigError, match="batch_size must be >= 1, got 0"):
        plan_sampling(num_examples=4, batch_size=0)


# Few (σ, q) pairs, many steps, as a node's ledger holds them; some repeat a pair
# non-consecutively, so the curve cache is hit with interleaved entries.
LEDGER_HISTORIES = [
    [(1.1, 0.25, 4)] * 10,
    [(0.8, 0.1, 10), (0.8, 0.1, 10), (2.0, 0.05, 20)],
    [(1.3, 0.02, 50), (0.9, 0.3, 3), (1.3, 0.02, 50), (0.9, 0.3, 3)],
    [(5.0, 1.0, 1)],
]


@pytest.mark.parametrize("history", LEDGER_HISTORIES)
@pytest.mark.parametrize("delta", [1e-5, 1e-3])
def test_cached_rdp_epsilon_equals_opacus_rdp_accountant_stepped(history, delta):
    # Independent reference: Opacus's accountant fed one step() per DP-SGD step.
    reference = RDPAccountant()
    for sigma, rate, steps in history:
        for _ in range(steps):
            reference.step(noise_multiplier=sigma, sample_rate=rate)
    expected = reference.get_epsilon(delta=delta)
    for _ in range(2):  # the second evaluation is served from the curve cache
        assert epsilon_for(history=history, delta=delta) == pytest.approx(
            expected, rel=1e-12
        )


def test_rdp_curve_scaled_by_steps_is_opacus_compute_rdp():
    curve = rdp_curve(noise_multiplier=1.1, sample_rate=0.25)
    expected = compute_rdp(q=0.25, noise_multiplier=1.1, steps=37, orders=ORDERS)
    assert (curve * 37 == expected).all()
    with pytest.raises(ValueError, match="read-only"):
        curve[0] = 0.0  # a shared cached array must not be changed by a caller


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_schedule_is_epsilon_after_each_round(accountant):
    entry = (1.1, 0.25, 4)
    acct = {"rdp": RDPAccountant, "prv": PRVAccountant}[accountant]
    schedule = epsilon_schedule(
        entry=entry, rounds=3, delta=1e-5, accountant=accountant
    )
    assert schedule[0] == 0.0
    for k in (1, 2, 3):
        reference = acct()
        reference.history = [(1.1, 0.25, 4 * k)]
        assert schedule[k] == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-9)


def test_epsilon_schedule_rejects_a_bad_entry():
    with pytest.raises(ConfigError, match="planned round: sample_rate"):
        epsilon_schedule(entry=(1.0, 1.5, 4), rounds=2, delta=1e-5)

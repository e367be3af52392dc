import math

import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from fedge.client.budget import check_budget
from fedge.shared.errors import ConfigError
from fedge.shared.privacy_history import Release, ReleaseHistory

# Opacus's reference (opacus/tests/accountants_test.py, test_rdp_accountant):
# 2250 steps of σ = 1.5 at q = 0.04, δ = 1e-5 spend ε = 7.32911117143.
REFERENCE_EPSILON = 7.32911117143


def two_rounds_of_750():
    return ReleaseHistory(tuple(Release(r, 1.5, 0.04, 750) for r in (1, 2)))


def test_round_that_would_exceed_the_budget_is_refused():
    decision = check_budget(
        history=two_rounds_of_750(),
        planned=(1.5, 0.04, 750),
        delta=1e-5,
        budget_epsilon=7.0,
    )
    assert not decision.allowed
    assert decision.epsilon_after == pytest.approx(REFERENCE_EPSILON, abs=1e-9)
    assert "7.329" in decision.reason and "refusing to train" in decision.reason


def test_round_within_the_budget_is_allowed_and_epsilon_now_is_what_was_spent():
    orders = RDPAccountant.DEFAULT_ALPHAS
    spent = get_privacy_spent(
        orders=orders,
        rdp=compute_rdp(q=0.04, noise_multiplier=1.5, steps=1500, orders=orders),
        delta=1e-5,
    )[0]
    decision = check_budget(
        history=two_rounds_of_750(),
        planned=(1.5, 0.04, 750),
        delta=1e-5,
        budget_epsilon=7.5,
    )
    assert decision.allowed
    assert decision.epsilon_now == pytest.approx(spent, rel=1e-12)
    assert decision.epsilon_now < decision.epsilon_after <= 7.5
    assert decision.reason.endswith("within the budget ε = 7.5.")


def test_reaching_the_budget_exactly_is_allowed():
    history = two_rounds_of_750()
    exact = check_budget(
        history=history, planned=(1.5, 0.04, 750), delta=1e-5, budget_epsilon=10.0
    ).epsilon_after
    decision = check_budget(
        history=history, planned=(1.5, 0.04, 750), delta=1e-5, budget_epsilon=exact
    )
    assert decision.allowed


def test_first_round_starts_from_zero_and_a_noiseless_round_is_refused():
    empty = ReleaseHistory()
    assert (
        check_budget(
            history=empty, planned=(1.0, 0.1, 10), delta=1e-5, budget_epsilon=8.0
        ).epsilon_now
        == 0.0
    )
    decision = check_budget(
        history=empty, planned=(0.0, 0.1, 10), delta=1e-5, budget_epsilon=1e6
    )
    assert decision.epsilon_after == math.inf and not decision.allowed


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"budget_epsilon": 0.0}, r"budget ε must be > 0, got 0.0"),
        ({"planned": (1.0, 2.0, 5)}, r"planned round: sample_rate must be in \(0, 1\]"),
        ({"delta": 0.0}, r"δ must be in \(0, 1\)"),
        ({"accountant": "moments"}, r"accountant must be one of"),
    ],
)
def test_bad_budget_inputs_raise(kwargs, match):
    args = {
        "history": ReleaseHistory(),
        "planned": (1.0, 0.1, 5),
        "delta": 1e-5,
        "budget_epsilon": 8.0,
        "accountant": "rdp",
    } | kwargs
    with pytest.raises(ConfigError, match=match):
        check_budget(**args)


def test_a_schedule_answers_a_ledger_of_planned_rounds_without_the_accountant(
    monkeypatch,
):
    def no_accountant(**_):
        raise AssertionError("the accountant was called")

    monkeypatch.setattr("fedge.client.budget.epsilon_for", no_accountant)
    # Planted values: the check must read elements k and k + 1 of the schedule.
    decision = check_budget(
        history=two_rounds_of_750(),
        planned=(1.5, 0.04, 750),
        delta=1e-5,
        budget_epsilon=3.5,
        schedule=(0.0, 1.0, 2.5, 4.0),
    )
    assert (decision.epsilon_now, decision.epsilon_after) == (2.5, 4.0)
    assert not decision.allowed


def test_a_ledger_the_schedule_does_not_describe_is_accounted_afresh():
    history = two_rounds_of_750()
    # Another plan than the ledger's rounds: the schedule is ignored.
    decision = check_budget(
        history=history,
        planned=(1.5, 0.05, 750),
        delta=1e-5,
        budget_epsilon=100.0,
        schedule=(0.0, 1.0, 2.0, 3.0),
    )
    assert decision.epsilon_now > 3.0  # two real rounds, not the planted 2.0
    # A schedule that ends at the ledger: ε now from it, ε after accounted.
    decision = check_budget(
        history=history,
        planned=(1.5, 0.04, 750),
        delta=1e-5,
        budget_epsilon=100.0,
        schedule=(0.0, 1.0, 2.0),
    )
    assert decision.epsilon_now == 2.0
    assert decision.epsilon_after == pytest.approx(REFERENCE_EPSILON, abs=1e-9)

"""The one release history both ledgers keep: ε, append-only, adopt the larger, codecs."""

import itertools
import json

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from fedge.shared import keys
from fedge.shared.errors import ConfigError
from fedge.shared.privacy_history import (
    LEDGER_COLUMNS,
    WIRE_COLUMNS,
    Release,
    ReleaseHistory,
    spend_at_least,
)


def history_of(*releases):
    history = ReleaseHistory()
    for release in releases:
        history = history.plus(Release(*release))
    return history


def opacus_epsilon(entries, delta, accountant=RDPAccountant):
    acct = accountant()
    for sigma, rate, steps in entries:
        for _ in range(steps):
            acct.step(noise_multiplier=sigma, sample_rate=rate)
    return acct.get_epsilon(delta=delta)


def test_epsilon_over_rounds_matches_opacus_reference_value():
    # 2250 steps of σ = 1.5, q = 0.04 at δ = 1e-5 give ε = 7.32911117143
    # (opacus/tests/accountants_test.py, test_rdp_accountant), here as 3 rounds.
    history = history_of(*[(r, 1.5, 0.04, 750) for r in (1, 2, 3)])
    assert history.total_steps == 2250
    assert history.epsilon(delta=1e-5) == pytest.approx(7.32911117143, abs=1e-9)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_of_mixed_releases_equals_an_independent_opacus_accountant(
    accountant,
):
    # Round 2 released twice, round 3 with more noise and another rate.
    releases = [
        (1, 1.1, 0.2, 10),
        (2, 1.1, 0.2, 10),
        (2, 1.1, 0.2, 10),
        (3, 2.0, 0.1, 5),
    ]
    history = history_of(*releases)
    expected = opacus_epsilon(
        [r[1:] for r in releases],
        1e-5,
        RDPAccountant if accountant == "rdp" else PRVAccountant,
    )
    rel = 1e-9 if accountant == "rdp" else 1e-3  # PRV discretises per entry
    assert history.epsilon(delta=1e-5, accountant=accountant) == pytest.approx(
        expected, rel=rel
    )


def test_epsilon_grows_strictly_with_every_release_and_is_zero_for_none():
    history = ReleaseHistory()
    values = [history.epsilon(delta=1e-5)]
    for r in range(1, 6):
        history = history.plus(Release(r, 1.0, 0.1, 20))
        values.append(history.epsilon(delta=1e-5))
    assert values[0] == 0.0
    assert all(b > a for a, b in itertools.pairwise(values))


def test_plus_appends_and_leaves_the_history_it_extends_as_it_was():
    one = history_of((1, 1.1, 0.2, 10))
    two = one.plus(Release(1, 1.1, 0.2, 10))  # a round may be released twice
    assert one.server_rounds == [1] and two.server_rounds == [1, 1]
    assert two.total_steps == 20 and two.has_round(1) and not two.has_round(2)
    assert len(two) == 2
    assert two.opacus_history == [(1.1, 0.2, 10), (1.1, 0.2, 10)]


def test_the_larger_record_wins_round_by_round():
    own = history_of(*[(r, 1.0, 0.1, 5) for r in (1, 2, 2, 4)])  # 3's reply lost
    coordinator = history_of(*[(r, 1.0, 0.1, 5) for r in (1, 2, 3)])
    assert own.adopt_larger(coordinator).server_rounds == [1, 2, 2, 3, 4]
    assert coordinator.adopt_larger(own).server_rounds == [1, 2, 2, 3, 4]
    assert own.adopt_larger(ReleaseHistory()) is own


def test_on_a_tie_the_own_copy_wins():
    own = history_of((1, 1.0, 0.1, 5))
    other = history_of((1, 0.5, 0.1, 5))
    assert own.adopt_larger(other) == own


@pytest.mark.parametrize(
    ("reported", "spent"),
    [
        ((1.1, 0.2, 10), (1.1, 0.2, 10)),  # as planned
        ((2.0, 0.2, 10), (1.1, 0.2, 10)),  # more noise than planned: the plan's
        ((1.1, 0.1, 10), (1.1, 0.2, 10)),  # a lower rate: the plan's
        ((1.1, 0.2, 3), (1.1, 0.2, 10)),  # fewer steps: the plan's
        ((0.9, 0.5, 12), (0.9, 0.5, 12)),  # spends more: as reported
        ((float("nan"), 1.5, 10), (1.1, 0.2, 10)),  # nonsense: the plan's
        (None, (1.1, 0.2, 10)),
    ],
)
def test_a_release_spends_at_least_its_plan(reported, spent):
    assert spend_at_least(reported, (1.1, 0.2, 10)) == spent


def test_ledger_columns_are_the_ledger_files_names_and_round_trip():
    history = history_of((1, 1.1, 0.2, 10), (2, 1.1, 0.2, 10))
    columns = history.to_columns(LEDGER_COLUMNS)
    assert columns == {
        "server-rounds": [1, 2],
        "noise-multipliers": [1.1, 1.1],
        "sample-rates": [0.2, 0.2],
        "steps": [10, 10],
    }
    back = ReleaseHistory.from_columns(
        json.loads(json.dumps(columns)), LEDGER_COLUMNS, where="file"
    )
    assert back == history


def test_wire_columns_are_the_keys_the_coordinator_sends():
    history = history_of((3, 0.8, 0.1, 30))
    assert history.to_columns(WIRE_COLUMNS) == {
        keys.RECORD_ROUNDS: [3],
        keys.RECORD_NOISE_MULTIPLIERS: [0.8],
        keys.RECORD_SAMPLE_RATES: [0.1],
        keys.RECORD_STEPS: [30],
    }
    sent = history.to_columns(WIRE_COLUMNS)
    assert ReleaseHistory.from_columns(sent, WIRE_COLUMNS, where="wire") == history


def test_rows_round_trip_through_json():
    history = history_of((1, 1.1, 0.2, 10), (1, 0.9, 0.3, 12))
    rows = json.loads(json.dumps(history.to_rows()))
    assert rows == [[1, 1.1, 0.2, 10], [1, 0.9, 0.3, 12]]
    assert ReleaseHistory.from_rows(rows, where="record") == history


@pytest.mark.parametrize(
    ("rows", "error", "match"),
    [
        ([[1, -1.0, 0.2, 10]], ConfigError, r"node 7, release 1: noise_multiplier"),
        (
            [[1, 1.1, 0.2, 10], [2, 1.1, 0.0, 10]],
            ConfigError,
            r"release 2: sample_rate",
        ),
        ([["1", 1.1, 0.2, 10]], ConfigError, r"server_round must be an int, got '1'"),
        ([[1, 1.1, 0.2, 2.5]], ConfigError, r"steps must be an integer >= 0"),
        ([[1, 1.1, 0.2]], ConfigError, r"must be \(noise_multiplier, sample_rate"),
    ],
)
def test_an_invalid_release_is_named_where_it_stands(rows, error, match):
    with pytest.raises(error, match=match):
        ReleaseHistory.from_rows(rows, where="node 7")


def test_columns_that_are_missing_uneven_or_not_lists_are_refused():
    columns = history_of((1, 1.1, 0.2, 10)).to_columns(LEDGER_COLUMNS)
    with pytest.raises(KeyError, match="steps"):
        ReleaseHistory.from_columns(
            {k: v for k, v in columns.items() if k != "steps"},
            LEDGER_COLUMNS,
            where="f",
        )
    with pytest.raises(ValueError, match="zip"):
        ReleaseHistory.from_columns(
            columns | {"steps": [10, 10]}, LEDGER_COLUMNS, where="f"
        )
    with pytest.raises(TypeError, match="'steps' holds 10, expected a list"):
        ReleaseHistory.from_columns(columns | {"steps": 10}, LEDGER_COLUMNS, where="f")

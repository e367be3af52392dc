"""A round's metrics row and the decision to stop a run early."""

import pytest
from flwr.app import ArrayRecord

from fedge.server.federation_loop import RoundOutcome
from fedge.server.round_summary import round_row, stop_reason
from fedge.shared.config import from_run_config


def outcome(**fields):
    return RoundOutcome(server_round=3, arrays=ArrayRecord(), central={}, **fields)


def test_a_round_scored_on_every_node_adds_the_summary_and_its_cost():
    evaluated = [
        {"node-id": 1, "accuracy": 0.5},
        {"node-id": 2, "accuracy": 1.0},
        {"node-id": 3, "accuracy": 0.0},
    ]

    row, details = round_row(
        outcome(client_evaluation=evaluated, client_evaluation_s=2.5, round_time_s=9.0),
        fairness_threshold=0.8,
    )

    assert row["clients-evaluated"] == 3
    assert row["client-accuracy-mean"] == pytest.approx(0.5)
    assert row["client-accuracy-worst"] == 0.0
    assert row["client-share-below-threshold"] == pytest.approx(2 / 3)
    assert row["client-evaluation-s"] == 2.5
    assert row["round-time-s"] == 9.0
    assert details["client-evaluation"] == evaluated


def test_a_round_not_scored_on_every_node_has_no_fairness_columns():
    row, details = round_row(outcome(), fairness_threshold=0.8)

    assert "clients-evaluated" not in row
    assert "client-evaluation-s" not in row
    assert "client-evaluation" not in details


def test_the_row_and_details_carry_the_outcomes_counts_and_clients():
    clients = [
        {"node-id": 4, "status": "aggregated", "epsilon": 2.0},
        {"node-id": 5, "status": "refused", "epsilon": 4.0},
        {"node-id": 6, "status": "dropped", "problem": "'w' is not finite"},
    ]
    counts = {"sampled": 5, "replies": 3, "failures": 2}
    counts |= {"dropped": 1, "refused": 1, "aggregated": 1}
    errors = ["E: a", "E: b", "E: a"]
    row, details = round_row(
        outcome(
            sampled_nodes=[4, 5, 6, 7, 8],
            clients=clients,
            reply_errors=errors,
            **counts,
        ),
        fairness_threshold=0.8,
    )

    assert {k: row[k] for k in counts} == counts
    # Refusing clients' spent ε counts too.
    assert (row["epsilon-max"], row["epsilon-mean"]) == (4.0, 3.0)
    assert details["clients"] == clients
    assert details["sampled-nodes"] == [4, 5, 6, 7, 8]
    assert details["reply-errors"] == {"E: a": 2, "E: b": 1}


def test_a_round_without_error_replies_lists_none():
    _, details = round_row(outcome(replies=3), fairness_threshold=0.8)

    assert "reply-errors" not in details


class Grid:
    def __init__(self, node_ids):
        self.node_ids = node_ids

    def get_node_ids(self):
        return list(self.node_ids)


def config(**overrides):
    return from_run_config(
        {"num-server-rounds": 5, "min-replies": 2, **overrides}, fill_defaults=True
    )


@pytest.mark.parametrize(
    ("refused", "server_round", "stops"),
    [
        (set(), 2, False),  # nobody refused
        ({1}, 2, False),  # 2 and 3 can still train: min-replies = 2 met
        ({1, 2}, 2, True),  # only 3 can train
        ({1, 2, 3}, 2, True),
        ({1, 2, 3}, 5, False),  # the last round ends the run anyway: no early stop
    ],
)
def test_the_run_stops_when_fewer_than_min_replies_nodes_can_train(
    refused, server_round, stops
):
    reason = stop_reason(frozenset(refused), config(), server_round, Grid([1, 2, 3]))

    assert (reason is not None) == stops


def test_the_stop_reason_says_how_many_nodes_spent_their_budget():
    reason = stop_reason(frozenset({1, 2}), config(), 2, Grid([1, 2, 3]))

    assert reason is not None
    assert reason.startswith(
        "after round 2, 2 of 3 nodes have spent their privacy budget"
    )
    assert reason.endswith("1 can still train, fewer than min-replies = 2")

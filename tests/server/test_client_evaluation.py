import logging

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedge.server.client_evaluation import (
    evaluate_every_node,
    evaluation_due,
    nodes_to_evaluate,
)
from fedge.shared.config import from_run_config


def report(**overrides):
    return from_run_config(overrides, fill_defaults=True).report


@pytest.mark.parametrize(
    ("overrides", "ending_round", "due_rounds"),
    [
        ({}, 6, [6]),  # default: the last round only
        ({"evaluate-interval": 2}, 6, [2, 4, 6]),
        ({"evaluate-interval": 4}, 6, [4, 6]),
        # The run stops early after round 3 (every budget spent): its model too.
        ({}, 3, [3]),
        ({"evaluate-interval": 2}, 3, [2, 3]),
        ({"fairness-report": False, "evaluate-interval": 2}, 6, []),
        ({"fairness-report": False}, 3, []),
    ],
)
def test_rounds_due_for_per_client_evaluation(overrides, ending_round, due_rounds):
    config = report(**overrides)
    due = [
        r
        for r in range(1, ending_round + 1)
        if evaluation_due(r, ends_run=r == ending_round, report=config)
    ]
    assert due == due_rounds


class AnsweringGrid:
    """Answers each evaluate message with ``answers[node_id]`` (None: an error)."""

    def __init__(self, answers):
        self.answers = answers
        self.sent = []

    def get_node_ids(self):
        return list(self.answers)

    def push_messages(self, messages):
        ids = []
        for m in messages:
            m.metadata._message_id = f"m{m.metadata.dst_node_id}"
            self.sent.append(m)
            ids.append(m.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        replies = []
        for m in self.sent:
            if m.metadata.message_id not in message_ids:
                continue
            answer = self.answers[m.metadata.dst_node_id]
            metrics = MetricRecord(answer if answer is not None else {})
            replies.append(Message(RecordDict({"metrics": metrics}), reply_to=m))
        return replies


def test_every_node_is_evaluated_and_its_figures_kept(fakes, caplog):
    # Prepare: three nodes; node 3's reply lacks its figures.
    grid = AnsweringGrid(
        {
            2: {
                "num-examples": 4,
                "eval-loss": 0.5,
                "eval-accuracy": 0.75,
                "label-counts": [3, 1],
                "partition-id": 1,
            },
            1: {
                "num-examples": 2,
                "eval-loss": 1.5,
                "eval-accuracy": 0.5,
                "label-counts": [0, 2],
            },
            3: None,
        }
    )
    arrays = fakes.record({"w": np.zeros(2, np.float32)})

    # Execute
    with caplog.at_level(logging.WARNING):
        entries = evaluate_every_node(
            grid, arrays, ConfigRecord({"k": "v"}), server_round=4, timeout_s=5.0
        )

    # Assert: every node was asked, with the model and the round.
    assert sorted(m.metadata.dst_node_id for m in grid.sent) == [1, 2, 3]
    assert {m.metadata.message_type for m in grid.sent} == {"evaluate"}
    sent_config = grid.sent[0].content["config"]
    assert (sent_config["k"], sent_config["server-round"]) == ("v", 4)
    assert entries == [
        {
            "node-id": 1,
            "accuracy": 0.5,
            "loss": 1.5,
            "num-examples": 2,
            "label-counts": [0, 2],
        },
        {
            "node-id": 2,
            "accuracy": 0.75,
            "loss": 0.5,
            "num-examples": 4,
            "label-counts": [3, 1],
            "partition-id": 1,
        },
    ]
    assert "Evaluation reply from node 3 lacks its figures" in caplog.text
    assert "1 of 3 nodes did not answer" in caplog.text


FIGURES = {
    "num-examples": 2,
    "eval-loss": 1.0,
    "eval-accuracy": 0.5,
    "label-counts": [1, 1],
}


def evaluate(grid, fakes, **options):
    arrays = fakes.record({"w": np.zeros(2, np.float32)})
    return evaluate_every_node(grid, arrays, ConfigRecord(), timeout_s=5.0, **options)


def test_nodes_that_did_not_answer_the_round_are_not_asked_again(fakes, caplog):
    # A hung node would cost the round a second full reply timeout.
    grid = AnsweringGrid(dict.fromkeys([1, 2, 3], FIGURES))

    with caplog.at_level(logging.WARNING):
        entries = evaluate(grid, fakes, server_round=2, skip=frozenset({3}))

    assert sorted(m.metadata.dst_node_id for m in grid.sent) == [1, 2]
    assert [e["node-id"] for e in entries] == [1, 2]
    assert "1 node(s) that did not answer this round's training" in caplog.text


def test_at_most_max_nodes_are_asked_a_sample_seeded_by_the_round(fakes, caplog):
    grid = AnsweringGrid(dict.fromkeys(range(1, 11), FIGURES))

    with caplog.at_level(logging.INFO):
        entries = evaluate(
            grid,
            fakes,
            server_round=3,
            skip=frozenset({1}),
            max_nodes=4,
            sampler_seed=7,
        )

    asked = sorted(m.metadata.dst_node_id for m in grid.sent)
    assert len(asked) == 4 and 1 not in asked
    assert [e["node-id"] for e in entries] == asked
    # The same draw as nodes_to_evaluate's: a resumed run asks the same nodes.
    assert asked == nodes_to_evaluate(
        list(range(1, 11)),
        skip=frozenset({1}),
        max_nodes=4,
        sampler_seed=7,
        server_round=3,
    )
    assert "a seeded sample of 4 of 9 nodes (fairness-max-clients = 4" in caplog.text


def test_the_sample_depends_on_seed_and_round_only():
    def draw(seed, server_round, connected=tuple(range(100))):
        return nodes_to_evaluate(
            list(connected),
            skip=frozenset(),
            max_nodes=10,
            sampler_seed=seed,
            server_round=server_round,
        )

    assert draw(0, 5) == draw(0, 5)
    # The order nodes are listed in does not change the draw.
    assert draw(0, 5, connected=tuple(reversed(range(100)))) == draw(0, 5)
    assert draw(0, 5) != draw(0, 6) and draw(0, 5) != draw(1, 5)
    for seed in range(5):
        sample = draw(seed, 1)
        assert len(sample) == len(set(sample)) == 10
        assert sample == sorted(sample) and set(sample) <= set(range(100))


@pytest.mark.parametrize("max_nodes", [0, 3, 5])
def test_every_node_is_asked_when_the_cap_allows(max_nodes):
    connected = [5, 1, 3]

    asked = nodes_to_evaluate(
        connected,
        skip=frozenset(),
        max_nodes=max_nodes,
        sampler_seed=0,
        server_round=1,
    )

    assert asked == [1, 3, 5]

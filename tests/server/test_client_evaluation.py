import logging

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from server.client_evaluation import evaluate_every_node, evaluation_due
from shared.config import from_run_config


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


def test_nodes_that_did_not_answer_the_round_are_not_asked_again(fakes, caplog):
    # A hung node would cost the round a second full reply timeout.
    figures = {
        "num-examples": 2,
        "eval-loss": 1.0,
        "eval-accuracy": 0.5,
        "label-counts": [1, 1],
    }
    grid = AnsweringGrid({1: figures, 2: figures, 3: figures})
    arrays = fakes.record({"w": np.zeros(2, np.float32)})

    with caplog.at_level(logging.WARNING):
        entries = evaluate_every_node(
            grid,
            arrays,
            ConfigRecord(),
            server_round=2,
            timeout_s=5.0,
            skip=frozenset({3}),
        )

    assert sorted(m.metadata.dst_node_id for m in grid.sent) == [1, 2]
    assert [e["node-id"] for e in entries] == [1, 2]
    assert "1 node(s) that did not answer this round's training" in caplog.text

"""The round loop against a fake Grid and Flower's real FedAvg.

Replies are built as a ClientApp builds them, ``Message(content, reply_to=msg)``;
the fake Grid only routes each instruction to a per-node behaviour.
"""

import logging
from collections import OrderedDict
from uuid import uuid4

import numpy as np
import pytest
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedge.server import federation_loop, reply_collection
from fedge.server.federation_loop import (
    RoundOutcome,
    StopRun,
    _message_bytes,
    run_rounds,
)
from fedge.server.reply_check import ReplyCheck
from fedge.server.round_summary import round_row
from fedge.shared import keys, privacy_history
from fedge.shared.config import from_run_config
from fedge.shared.privacy import epsilon_for
from fedge.shared.privacy_plan import plan_for_config

REPLY_TIMEOUT_S = 12.5
LOOP_LOGGER = "fedge.server.federation_loop"


@pytest.fixture(autouse=True)
def server_identity(monkeypatch):
    # A ServerApp process has these set by Flower; instruction Messages need them.
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


@pytest.fixture(autouse=True)
def instant_waits(monkeypatch):
    # A silent node would otherwise hold a test for the whole reply timeout.
    class FakeTime:
        now = 0.0

        def monotonic(self):
            return self.now

        def sleep(self, seconds):
            self.now += seconds

    monkeypatch.setattr(reply_collection, "time", FakeTime())


def arrays_of(values):
    return ArrayRecord(OrderedDict(w=torch.tensor(values, dtype=torch.float32)))


def weights(record):
    return record.to_torch_state_dict()["w"].numpy()


class FakeGrid:
    """Routes each message to ``behaviours[node_id](message) -> reply | None``."""

    def __init__(self, behaviours):
        self.behaviours = behaviours
        self.sent = []
        self._replies = {}

    def get_node_ids(self):
        return list(self.behaviours)

    def push_messages(self, messages):
        messages = list(messages)
        self.sent.append(messages)
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            ids.append(message.metadata.message_id)
            reply = self.behaviours[message.metadata.dst_node_id](message)
            if reply is not None:
                self._replies[message.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids):
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]


def node(delta, num_examples, train_loss=1.0, eval_loss=1.0):
    """A node that returns the received weights plus ``delta``."""

    def behave(message):
        if message.metadata.message_type == MessageType.TRAIN:
            received = weights(message.content["arrays"])
            content = RecordDict(
                {
                    "arrays": arrays_of(received + delta),
                    "metrics": MetricRecord(
                        {"num-examples": num_examples, "train-loss": train_loss}
                    ),
                }
            )
        else:
            content = RecordDict(
                {
                    "metrics": MetricRecord(
                        {"num-examples": num_examples, "eval-loss": eval_loss}
                    )
                }
            )
        return Message(content, reply_to=message)

    return behave


def failing_node(message):
    return Message(Error(code=0, reason="out of memory"), reply_to=message)


def silent_node(message):
    return None


def fedavg():
    return FedAvg(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=1,
    )


def run(grid, *, arrays, first_round=1, last_round=1, federated_evaluation=False):
    outcomes, central_calls = [], []

    def central_eval(server_round, record):
        central_calls.append((server_round, weights(record).copy()))
        return {"accuracy": 0.25 * server_round}

    final = run_rounds(
        grid,
        fedavg(),
        arrays=arrays,
        first_round=first_round,
        last_round=last_round,
        train_config=ConfigRecord({"lr": 0.5}),
        evaluate_config=ConfigRecord({"batch": 8}),
        reply_timeout_s=REPLY_TIMEOUT_S,
        central_eval=central_eval,
        on_round_end=outcomes.append,
        federated_evaluation=federated_evaluation,
    )
    return final, outcomes, central_calls


# ---------------------------------------------------------------- one round
def test_round_aggregates_replies_and_counts_failures_and_bytes():
    start = arrays_of([0.0, 0.0])
    grid = FakeGrid(
        {
            11: node(np.array([1.0, 2.0]), 1, train_loss=1.0),
            12: node(np.array([4.0, 8.0]), 3, train_loss=3.0),
            13: failing_node,
            14: silent_node,
        }
    )

    final, outcomes, central_calls = run(grid, arrays=start)

    # FedAvg by num-examples: ([1, 2] * 1 + [4, 8] * 3) / 4
    np.testing.assert_allclose(weights(final), [3.25, 6.5])
    (outcome,) = outcomes
    assert isinstance(outcome, RoundOutcome)
    assert outcome.server_round == 1
    np.testing.assert_allclose(weights(outcome.arrays), [3.25, 6.5])
    assert outcome.sampled == 4
    assert outcome.replies == 2
    assert outcome.failures == 2  # one error reply, one node that never answered
    # Every instruction carries the global arrays; two replies carry arrays of
    # the same names, shapes and dtypes.
    per_record = start.count_bytes()
    assert per_record > 2 * 4  # at least the raw float32 payload
    assert outcome.bytes_sent == 4 * per_record
    assert outcome.bytes_received == 2 * per_record
    assert outcome.train_metrics["train-loss"] == pytest.approx((1.0 * 1 + 3.0 * 3) / 4)
    assert sorted(m["node-id"] for m in outcome.clients) == [11, 12]
    by_node = {m["node-id"]: m for m in outcome.clients}
    assert by_node[12]["status"] == "aggregated"
    assert by_node[12]["num-examples"] == 3
    assert by_node[12]["train-loss"] == 3.0
    # Central evaluation sees the aggregated model and its result is recorded.
    assert [r for r, _ in central_calls] == [1]
    np.testing.assert_allclose(central_calls[0][1], [3.25, 6.5])
    assert outcome.central == {"accuracy": 0.25}
    assert outcome.evaluate_metrics == {}
    assert outcome.round_time_s >= 0
    assert outcome.updated
    assert outcome.reply_errors == ["out of memory"]


def test_instructions_carry_round_config_and_reply_timeout():
    grid = FakeGrid({11: node(0.0, 1), 12: node(0.0, 1)})
    train_config = ConfigRecord({"lr": 0.5})

    run_rounds(
        grid,
        fedavg(),
        arrays=arrays_of([1.0]),
        first_round=2,
        last_round=2,
        train_config=train_config,
        evaluate_config=ConfigRecord(),
        reply_timeout_s=REPLY_TIMEOUT_S,
        central_eval=lambda r, a: {},
        on_round_end=lambda o: None,
        federated_evaluation=False,
    )

    (sent,) = grid.sent
    assert sorted(m.metadata.dst_node_id for m in sent) == [11, 12]
    for message in sent:
        assert message.metadata.message_type == MessageType.TRAIN
        assert message.content["config"]["lr"] == 0.5
        assert message.content["config"]["server-round"] == 2
        np.testing.assert_array_equal(weights(message.content["arrays"]), [1.0])
    # The caller's record is not changed by the strategy's round injection.
    assert "server-round" not in train_config


def test_federated_evaluation_sends_the_new_model_and_aggregates_metrics():
    grid = FakeGrid(
        {
            11: node(np.array([2.0]), 1, eval_loss=2.0),
            12: node(np.array([6.0]), 3, eval_loss=6.0),
        }
    )

    _, outcomes, _ = run(grid, arrays=arrays_of([0.0]), federated_evaluation=True)

    _, eval_sent = grid.sent
    assert len(eval_sent) == 2
    for message in eval_sent:
        assert message.metadata.message_type == MessageType.EVALUATE
        assert message.content["config"]["batch"] == 8
        # (2 * 1 + 6 * 3) / 4 = 5: the aggregated model, not the old one.
        np.testing.assert_allclose(weights(message.content["arrays"]), [5.0])
    assert outcomes[0].evaluate_metrics["eval-loss"] == pytest.approx(
        (2.0 * 1 + 6.0 * 3) / 4
    )


# ---------------------------------------------------------------- several rounds
def test_rounds_chain_from_first_to_last_round():
    # Each round adds the weighted mean delta (1 * 1 + 5 * 3) / 4 = 4.
    grid = FakeGrid({11: node(1.0, 1), 12: node(5.0, 3)})

    final, outcomes, central_calls = run(
        grid, arrays=arrays_of([0.0, 10.0]), first_round=3, last_round=5
    )

    assert [o.server_round for o in outcomes] == [3, 4, 5]
    assert [r for r, _ in central_calls] == [3, 4, 5]
    assert [o.central["accuracy"] for o in outcomes] == [0.75, 1.0, 1.25]
    sent_weights = [
        weights(round_sent[0].content["arrays"]) for round_sent in grid.sent
    ]
    np.testing.assert_allclose(sent_weights, [[0, 10], [4, 14], [8, 18]])
    assert [m[0].content["config"]["server-round"] for m in grid.sent] == [3, 4, 5]
    np.testing.assert_allclose(weights(final), [12.0, 22.0])
    np.testing.assert_allclose(weights(outcomes[-1].arrays), [12.0, 22.0])


def test_round_without_any_update_keeps_the_model_and_warns(caplog):
    grid = FakeGrid({11: failing_node, 12: silent_node, 13: failing_node})

    with caplog.at_level(logging.WARNING, logger=LOOP_LOGGER):
        final, outcomes, central_calls = run(grid, arrays=arrays_of([7.0]))

    np.testing.assert_array_equal(weights(final), [7.0])
    (outcome,) = outcomes
    assert (outcome.sampled, outcome.replies, outcome.failures) == (3, 0, 3)
    assert outcome.bytes_received == 0
    assert outcome.clients == []
    assert outcome.train_metrics == {}
    np.testing.assert_array_equal(central_calls[0][1], [7.0])
    assert not outcome.updated
    assert outcome.reply_errors == ["out of memory", "out of memory"]
    # One node gave no reply at all: not "every node failed alike".
    assert [r.getMessage() for r in caplog.records if r.name == LOOP_LOGGER] == [
        "Round 1: no update was aggregated; the global model is unchanged."
    ]


SHADOWED = "ModuleNotFoundError: No module named 'client.client_app'; 'client' is not a package"


def shadowed_node(pid):
    """A simulated node whose ClientApp cannot be imported, as Ray reports it."""

    def behave(message):
        reason = (
            "<class 'ray.exceptions.RayTaskError(RaySystemError)'>:<'"
            f"ray::ClientAppActor.run() (pid={pid}, actor_id=a8{pid})\n"
            "ray.exceptions.RaySystemError: System error: No module named "
            "'client.client_app'; 'client' is not a package\n"
            f"traceback: Traceback (most recent call last):\n{SHADOWED}'>"
        )
        return Message(Error(code=0, reason=reason), reply_to=message)

    return behave


def test_every_node_failing_alike_is_said_once_with_the_likely_cause(caplog):
    grid = FakeGrid({11: shadowed_node(5337), 12: shadowed_node(5338)})

    with caplog.at_level(logging.WARNING, logger=LOOP_LOGGER):
        _, outcomes, _ = run(grid, arrays=arrays_of([7.0]), last_round=2)

    assert [o.reply_errors for o in outcomes] == [[SHADOWED, SHADOWED]] * 2
    lines = [r.getMessage() for r in caplog.records if r.name == LOOP_LOGGER]
    assert len(lines) == 2  # one per round, not one per node
    for server_round, line in enumerate(lines, start=1):
        assert line == (
            f"Round {server_round}: all 2 sampled nodes failed with the same error: "
            f"{SHADOWED} (likely cause: a module named 'client' that is not a "
            "package, such as a file client.py in the folder the run or node was "
            "started from, hides the app's 'client' package; rename that file or "
            "start from another folder); no update was aggregated, the global "
            "model is unchanged."
        )


# ---------------------------------------------------------------- run endings
EVALUATED = [{"node-id": 11, "accuracy": 0.5}]


CLIENT_EVALUATION_S = 7.5


@pytest.fixture
def loop_clock(monkeypatch):
    """The loop's clock; the fake per-client evaluation advances it 7.5 s."""

    class FakeTime:
        now = 100.0

        def monotonic(self):
            return self.now

    clock = FakeTime()
    monkeypatch.setattr(federation_loop, "time", clock)
    return clock


def run_until(grid, *, last_round, outcomes, calls, stop_after=None, clock=None):
    """Rounds 1..last_round; the run stops after round ``stop_after`` if given.

    ``calls`` gets (round, evaluated weights, ends_run) per client_eval call.
    """

    def client_eval(server_round, record, unanswered, ends_run):
        calls.append((server_round, weights(record).copy(), ends_run))
        if not ends_run:
            return None
        if clock is not None:
            clock.now += CLIENT_EVALUATION_S
        return EVALUATED

    def stop_check(outcome):
        if outcome.server_round == stop_after:
            return "every node has spent its privacy budget"
        return None

    return run_rounds(
        grid,
        fedavg(),
        arrays=arrays_of([0.0]),
        first_round=1,
        last_round=last_round,
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
        reply_timeout_s=REPLY_TIMEOUT_S,
        central_eval=lambda r, a: {"accuracy": 0.5},
        on_round_end=outcomes.append,
        federated_evaluation=False,
        client_eval=client_eval,
        stop_check=stop_check,
    )


def test_only_the_last_round_is_told_it_ends_the_run(loop_clock):
    outcomes, calls = [], []
    grid = FakeGrid({11: node(1.0, 1)})  # each round adds 1 to the model

    final = run_until(
        grid, last_round=3, outcomes=outcomes, calls=calls, clock=loop_clock
    )

    assert [(r, ends) for r, _, ends in calls] == [(1, False), (2, False), (3, True)]
    np.testing.assert_allclose(weights(final), [3.0])
    assert [o.client_evaluation for o in outcomes] == [None, None, EVALUATED]
    # Its time is measured apart from the round's, and is part of it.
    assert [o.client_evaluation_s for o in outcomes] == [0, 0, CLIENT_EVALUATION_S]
    assert outcomes[-1].round_time_s == CLIENT_EVALUATION_S


def test_a_run_stopped_early_evaluates_the_model_it_ends_with_on_every_node():
    outcomes, calls = [], []
    grid = FakeGrid({11: node(1.0, 1)})  # each round adds 1 to the model

    with pytest.raises(StopRun, match="spent its privacy budget") as stopped:
        run_until(grid, last_round=5, outcomes=outcomes, calls=calls, stop_after=2)

    # Round 2 is told it ends the run; no round 3 is sent.
    assert [(r, ends) for r, _, ends in calls] == [(1, False), (2, True)]
    assert len(grid.sent) == 2
    # The model evaluated is the one the run ends with: round 2's, [2.0].
    np.testing.assert_allclose(weights(stopped.value.arrays), [2.0])
    np.testing.assert_allclose(calls[-1][1], [2.0])
    # The stopping round is recorded, with its per-client evaluation.
    assert [o.server_round for o in outcomes] == [1, 2]
    assert outcomes[-1].client_evaluation == EVALUATED


# ---------------------------------------------------------------- byte counting
def test_message_bytes_counts_arrays_only():
    instruction = Message(
        RecordDict({"arrays": arrays_of([1.0, 2.0, 3.0]), "config": ConfigRecord()}),
        dst_node_id=5,
        message_type=MessageType.TRAIN,
    )
    metrics_only = Message(
        RecordDict({"metrics": MetricRecord({"num-examples": 3})}),
        reply_to=instruction,
    )
    error = Message(Error(code=0, reason="x"), reply_to=instruction)

    assert _message_bytes(instruction) == arrays_of([1.0, 2.0, 3.0]).count_bytes()
    assert _message_bytes(metrics_only) == 0
    assert _message_bytes(error) == 0


# ---------------------------------------------------------------- one carrier
def run_checked(grid, checks, arrays, last_round=1):
    """Rounds 1..last_round with ``checks``; the final arrays and the outcomes."""
    outcomes = []
    final = run_rounds(
        grid,
        fedavg(),
        arrays=arrays,
        first_round=1,
        last_round=last_round,
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
        reply_timeout_s=REPLY_TIMEOUT_S,
        central_eval=lambda r, a: {},
        on_round_end=outcomes.append,
        federated_evaluation=False,
        checks=checks,
    )
    return final, outcomes


def metrics_only_node(**metrics):
    """A node that replies to training with metrics and no arrays (a refusal)."""

    def behave(message):
        content = RecordDict({"metrics": MetricRecord(dict(metrics))})
        return Message(content, reply_to=message)

    return behave


def misshapen_node(message):
    content = RecordDict(
        {
            "arrays": arrays_of([1.0, 2.0, 3.0]),
            "metrics": MetricRecord({"num-examples": 1, "train-loss": 1.0}),
        }
    )
    return Message(content, reply_to=message)


def test_the_outcome_carries_what_the_checks_found_and_the_row_copies_it(caplog):
    # Prepare: one usable reply, one misshapen, one refusal, one error, one silence
    grid = FakeGrid(
        {
            11: node(np.array([2.0, 4.0]), 1),
            12: misshapen_node,
            13: metrics_only_node(**{"num-examples": 1, "refused": 1}),
            14: failing_node,
            15: silent_node,
        }
    )

    # Execute
    final, outcomes = run_checked(grid, ReplyCheck(), arrays_of([0.0, 0.0]))

    # Assert: node 11 alone is in the model, and the outcome says so
    np.testing.assert_allclose(weights(final), [2.0, 4.0])
    (outcome,) = outcomes
    assert sorted(outcome.sampled_nodes) == [11, 12, 13, 14, 15]
    counts = ("sampled", "replies", "failures", "dropped", "refused", "aggregated")
    assert {k: getattr(outcome, k) for k in counts} == {
        "sampled": 5,
        "replies": 3,  # with content: usable, misshapen, refusal
        "failures": 2,  # the error and the silence
        "dropped": 1,
        "refused": 1,
        "aggregated": 1,
    }
    assert [(c["node-id"], c["status"]) for c in outcome.clients] == [
        (12, "dropped"),
        (13, "refused"),
        (11, "aggregated"),
    ]
    # The metrics row and the details are the outcome's figures, not recounted.
    row, details = round_row(outcome, fairness_threshold=0.8)
    assert {k: row[k] for k in counts} == {k: getattr(outcome, k) for k in counts}
    assert details["clients"] is outcome.clients
    assert details["sampled-nodes"] == outcome.sampled_nodes


def test_a_round_the_checks_leave_short_of_min_replies_aggregates_nothing():
    grid = FakeGrid({11: node(1.0, 1), 12: node(1.0, 1)})

    final, outcomes = run_checked(grid, ReplyCheck(min_replies=3), arrays_of([0.0]))

    np.testing.assert_array_equal(weights(final), [0.0])
    (outcome,) = outcomes
    assert (outcome.replies, outcome.aggregated, outcome.updated) == (2, 0, False)
    assert [c["status"] for c in outcome.clients] == ["aggregated", "aggregated"]


# The run's plan for a node of 150 examples (the coordinator checks against it).
DP_CONFIG = from_run_config(
    {"dp-mode": "sample", "noise-multiplier": 1.1, "batch-size": 32},
    fill_defaults=True,
)
PLAN = plan_for_config(config=DP_CONFIG, num_examples=150)


def dp_node(refuses_in_round=None):
    """A node that trains with DP-SGD as PLAN says, or refuses in one round.

    It reports a run total and an ε far above any record, so the
    coordinator's checks keep its update.
    """

    def behave(message):
        server_round = message.content["config"]["server-round"]
        release = {keys.NUM_EXAMPLES: 150, keys.EPSILON: 1e6}
        if server_round == refuses_in_round:
            content = RecordDict({"metrics": MetricRecord({**release, "refused": 1})})
            return Message(content, reply_to=message)
        received = weights(message.content["arrays"])
        metrics = {
            **release,
            keys.NOISE_MULTIPLIER: PLAN.noise_multiplier,
            keys.SAMPLE_RATE: PLAN.sample_rate,
            keys.DP_ROUND_STEPS: PLAN.steps_per_round,
            keys.DP_STEPS: 10**6,
        }
        content = RecordDict(
            {"arrays": arrays_of(received + 1.0), "metrics": MetricRecord(metrics)}
        )
        return Message(content, reply_to=message)

    return behave


def test_each_reply_has_its_epsilon_computed_once(monkeypatch):
    # Prepare: count the coordinator's ε computations (Opacus's accountant)
    calls = []

    def counted_epsilon_for(**kwargs):
        calls.append(kwargs["history"])
        return epsilon_for(**kwargs)

    monkeypatch.setattr(privacy_history, "epsilon_for", counted_epsilon_for)
    grid = FakeGrid({7: dp_node(), 8: dp_node(refuses_in_round=2)})
    checks = ReplyCheck(privacy_plan=lambda n: PLAN, accountant="rdp")

    # Execute: round 1, both train; round 2, node 8 refuses
    _, outcomes = run_checked(grid, checks, arrays_of([0.0]), last_round=2)

    # Assert: one ε per reply (2 + 2), each over the node's record so far
    assert [len(history) for history in calls] == [1, 1, 2, 1]
    assert [o.aggregated for o in outcomes] == [2, 1]
    rows = {c["node-id"]: c for c in outcomes[-1].clients}
    assert rows[8]["status"] == "refused"
    record_epsilon = epsilon_for(history=[PLAN.round_entry], delta=PLAN.delta)
    assert rows[8]["epsilon-coordinator"] == pytest.approx(record_epsilon, rel=1e-12)
    assert checks.privacy_record.history(7).opacus_history == [PLAN.round_entry] * 2

import json
import logging
import re

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg
from opacus.accountants import RDPAccountant

from fedge.server.privacy_record import Admission, PrivacyRecord, reported_release
from fedge.server.reply_check import ReplyCheck
from fedge.shared import keys
from fedge.shared.privacy_history import spend_at_least
from fedge.shared.privacy_plan import PrivacyPlan, plan_privacy

LOGGER = "fedge.server.reply_check"
# A node of 150 examples, batch 32, 2 local epochs, σ = 1.1: q = 32/150, 10 steps.
PLAN = PrivacyPlan(
    noise_multiplier=1.1,
    sample_rate=32 / 150,
    steps_per_round=10,
    rounds=3,
    delta=1e-4,
    accountant="rdp",
)


def opacus_epsilon(history, delta=1e-4):
    accountant = RDPAccountant()
    accountant.history = list(history)
    return accountant.get_epsilon(delta=delta)


def honest_report(record, node_id, **changes):
    """What an honest node reports after one more planned round."""
    entry = PLAN.round_entry
    history = [*record.history(node_id).opacus_history, entry]
    metrics = {
        keys.NUM_EXAMPLES: 150,
        keys.NOISE_MULTIPLIER: entry[0],
        keys.SAMPLE_RATE: entry[1],
        keys.DP_ROUND_STEPS: entry[2],
        keys.DP_STEPS: sum(s for *_, s in history),
        keys.EPSILON: opacus_epsilon(history),
        keys.DELTA: 1e-4,
    }
    return metrics | changes


def record_of(rounds, node_id=7):
    record = PrivacyRecord()
    for r in range(1, rounds + 1):
        record.add(node_id, r, PLAN.round_entry, 1e-4)
    return record


def test_the_coordinators_epsilon_equals_opacus_over_every_release():
    record = record_of(2)
    record.add(7, 2, PLAN.round_entry, 1e-4)  # round 2 released twice
    record.add(8, 1, (0.8, 0.1, 30), 1e-5)
    assert record.epsilon(7, accountant="rdp") == pytest.approx(
        opacus_epsilon([PLAN.round_entry] * 3), rel=1e-9
    )
    assert record.epsilon(8, accountant="rdp") == pytest.approx(
        opacus_epsilon([(0.8, 0.1, 30)], delta=1e-5), rel=1e-9
    )
    again = PrivacyRecord.from_dict(record.to_dict())
    assert again == record
    sent = record.to_message_config(7)
    assert sent[keys.RECORD_ROUNDS] == [1, 2, 2]
    assert sent[keys.RECORD_STEPS] == [10, 10, 10]
    assert record.to_message_config(99) == {}


def test_a_record_written_by_the_previous_code_loads():
    # privacy-record.json and the checkpoints' "privacy-record", as written
    # before the record kept one ReleaseHistory per node.
    old = {
        "releases": {
            "7": [[1, 1.1, 0.2, 10], [1, 1.1, 0.2, 10]],
            "8": [[2, 0.8, 0.1, 30]],
        },
        "deltas": {"7": 1e-4, "8": 1e-5},
    }
    record = PrivacyRecord.from_dict(json.loads(json.dumps(old)))
    assert record.history(7).opacus_history == [(1.1, 0.2, 10)] * 2
    assert record.history(8).server_rounds == [2]
    assert record.epsilon(8, accountant="rdp") == pytest.approx(
        opacus_epsilon([(0.8, 0.1, 30)], delta=1e-5), rel=1e-9
    )
    assert record.to_dict() == old


def admit(record, metrics, node_id=7, server_round=3):
    return record.admit(
        node_id, server_round, metrics, plan_for=lambda n: PLAN, accountant="rdp"
    )


def test_an_honest_report_is_admitted_with_the_epsilon_of_the_whole_record():
    record = record_of(2)
    admission = admit(record, honest_report(record, 7))
    expected = opacus_epsilon([PLAN.round_entry] * 3)
    assert admission.problem is None
    assert admission.epsilon == pytest.approx(expected, rel=1e-9)
    assert record.history(7).opacus_history == [PLAN.round_entry] * 3
    assert record.epsilon(7, accountant="rdp") == admission.epsilon


def test_a_reply_whose_plan_cannot_be_made_is_not_recorded():
    record = record_of(1)

    def no_plan(num_examples):
        raise ValueError(f"num_examples must be >= 1, got {num_examples}.")

    admission = record.admit(
        7, 2, {keys.NUM_EXAMPLES: 0}, plan_for=no_plan, accountant="rdp"
    )
    assert admission == Admission(
        epsilon=pytest.approx(opacus_epsilon([PLAN.round_entry]), rel=1e-9),
        problem="its privacy plan cannot be checked "
        "(num_examples must be >= 1, got 0.)",
    )
    assert record.history(7).opacus_history == [PLAN.round_entry]
    unknown = record.admit(9, 2, {}, plan_for=no_plan, accountant="rdp")
    assert unknown.epsilon is None and record.epsilon(9, accountant="rdp") is None


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({keys.NOISE_MULTIPLIER: 0.9}, r"noise multiplier 0.9, below the planned 1.1"),
        (
            {keys.DP_ROUND_STEPS: 5},
            r"reports 5 DP-SGD steps this round, the plan has 10",
        ),
        (
            {keys.DP_STEPS: 10},  # a wiped ledger: only this round's steps
            r"reports 10 DP-SGD steps in the run, the coordinator's record holds 30",
        ),
        (
            {keys.SAMPLE_RATE: 0.1},  # a lower q: a lower ε
            r"reports sample rate 0.1, the plan has 0.213333 "
            r"\(batch size ÷ its 150 examples\)",
        ),
        (
            {keys.SAMPLE_RATE: 0.5},  # a higher q: not the plan either
            r"reports sample rate 0.5, the plan has 0.213333",
        ),
        ({keys.EPSILON: 0.5}, r"reports ε = 0.5, below the coordinator's record"),
        ({keys.EPSILON: float("nan")}, r"reports ε = nan, below the coordinator's"),
        (
            {keys.DP_STEPS: float("nan")},
            r"reports nan DP-SGD steps in the run, the coordinator's record holds 30",
        ),
        (
            {keys.SAMPLE_RATE: float("inf")},
            r"reports no valid 'noise-multiplier', 'sample-rate' and "
            r"'dp-round-steps': its DP-SGD release cannot be checked",
        ),
    ],
)
def test_a_report_below_the_record_or_the_plan_is_named_and_still_counted(
    change, match
):
    record = record_of(2)
    metrics = honest_report(record, 7, **change)
    admission = admit(record, metrics)
    assert admission.problem is not None
    assert re.search(match, admission.problem), admission.problem
    # Recorded anyway, at no less than the plan spends (the smaller σ, the
    # larger q of report and plan).
    sigma = min(metrics[keys.NOISE_MULTIPLIER], 1.1)
    rate = metrics[keys.SAMPLE_RATE]
    rate = rate if 32 / 150 < rate <= 1 else 32 / 150
    assert record.history(7).opacus_history == [PLAN.round_entry] * 2 + [
        (sigma, rate, 10)
    ]
    assert admission.epsilon == pytest.approx(
        opacus_epsilon([PLAN.round_entry] * 2 + [(sigma, rate, 10)]), rel=1e-9
    )


def plan_for(num_examples):
    """The run's plan for a node of ``num_examples``: batch 32, 2 epochs, σ = 1.1."""
    return plan_privacy(
        num_examples=num_examples,
        batch_size=32,
        local_epochs=2,
        rounds=3,
        noise_multiplier=1.1,
        target_epsilon=8.0,
        target_delta=1e-4,
        accountant="rdp",
    )


def test_the_plans_sample_rate_is_the_batch_size_over_the_reported_examples():
    # The plan the coordinator checks q against, from the one formula nodes use:
    # q = 32/150, round(150/32) = 5 steps an epoch, 2 epochs.
    assert plan_for(150) == PLAN


@pytest.mark.parametrize(
    ("reported", "counted"),
    [
        ((1.1, 32 / 150, 10), (1.1, 32 / 150, 10)),  # honest: as reported
        ((2.0, 32 / 150, 10), (1.1, 32 / 150, 10)),  # more noise: not believed
        ((1.1, 0.05, 10), (1.1, 32 / 150, 10)),  # lower q: not believed
        ((1.1, 32 / 150, 3), (1.1, 32 / 150, 10)),  # fewer steps: not believed
        ((0.9, 0.5, 12), (0.9, 0.5, 12)),  # spends more than planned: as reported
        ((float("nan"), 1.5, 10), (1.1, 32 / 150, 10)),  # nonsense: the plan
        (None, (1.1, 32 / 150, 10)),  # no release reported: the plan
    ],
)
def test_a_release_counts_at_least_what_its_plan_spends(reported, counted):
    assert spend_at_least(reported, PLAN.round_entry) == counted


@pytest.mark.parametrize(
    "metrics",
    [
        {keys.NOISE_MULTIPLIER: 1.1, keys.SAMPLE_RATE: 0.2},
        {keys.NOISE_MULTIPLIER: 1.1, keys.SAMPLE_RATE: 0.2, keys.DP_ROUND_STEPS: 2.5},
        {
            keys.NOISE_MULTIPLIER: float("nan"),
            keys.SAMPLE_RATE: 0.2,
            keys.DP_ROUND_STEPS: 10,
        },
    ],
)
def test_a_release_with_a_missing_or_non_finite_figure_is_not_read(metrics):
    assert reported_release(metrics) is None


def sent_to(checks, server_round, nodes, w, fakes):
    """Train messages to ``nodes`` as the round loop sends them: each with its record."""
    strategy = FedAvg(fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1)
    msgs = list(
        strategy.configure_train(
            server_round, fakes.record(w), ConfigRecord(), fakes.FakeGrid(nodes)
        )
    )
    checks.send_records(msgs)
    return {m.metadata.dst_node_id: m for m in msgs}


def test_a_node_reporting_a_lower_sample_rate_is_dropped_and_counted_at_the_plans(
    fakes, caplog
):
    # Prepare: the plan's q follows the examples a node reports: batch 32 over
    # 150 examples is q = 32/150 (node 7), over 300 it is 32/300 (node 8).
    checks = ReplyCheck(privacy_plan=plan_for, accountant="rdp")
    w = {"w": np.zeros((2, 2), np.float32)}
    msgs = sent_to(checks, 1, [7, 8], w, fakes)
    # Node 7 claims q = 0.05 and the ε that q would give, consistently: every
    # figure but q is honest, so only the q check can catch it. Node 8 is
    # honest with 300 examples: 32/300, round(300/32) = 9 steps an epoch.
    lying = (1.1, 0.05, 10)
    honest_8 = (1.1, 32 / 300, 18)
    replies = [
        fakes.reply(
            msgs[7],
            w,
            **{
                keys.NUM_EXAMPLES: 150,
                keys.NOISE_MULTIPLIER: 1.1,
                keys.SAMPLE_RATE: 0.05,
                keys.DP_ROUND_STEPS: 10,
                keys.DP_STEPS: 10,
                keys.EPSILON: opacus_epsilon([lying]),
                keys.DELTA: 1e-4,
            },
        ),
        fakes.reply(
            msgs[8],
            w,
            **{
                keys.NUM_EXAMPLES: 300,
                keys.NOISE_MULTIPLIER: 1.1,
                keys.SAMPLE_RATE: 32 / 300,
                keys.DP_ROUND_STEPS: 18,
                keys.DP_STEPS: 18,
                keys.EPSILON: opacus_epsilon([honest_8]),
                keys.DELTA: 1e-4,
            },
        ),
    ]

    # Execute
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        checked = checks.check_train(1, replies, w)

    # Assert: logged with the node, the expected q and the one it sent; dropped.
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert lines == [
        "node 7: reports sample rate 0.05, the plan has 0.213333 (batch size ÷ its "
        "150 examples); update dropped"
    ]
    rows = {row["node-id"]: row for row in checked.clients}
    assert rows[7]["status"] == "dropped" and rows[8]["status"] == "aggregated"
    # Its release counts, at the plan's q: ε is Opacus's over 32/150, not 0.05.
    record = checks.privacy_record
    assert record.history(7).opacus_history == [(1.1, 32 / 150, 10)]
    assert record.history(8).opacus_history == [honest_8]
    planned = opacus_epsilon([(1.1, 32 / 150, 10)])
    assert planned > 2 * opacus_epsilon([lying])  # the lie would matter
    assert record.epsilon(7, accountant="rdp") == pytest.approx(planned, rel=1e-9)
    assert rows[7]["epsilon"] == pytest.approx(planned, rel=1e-9)
    assert rows[8]["epsilon"] == pytest.approx(opacus_epsilon([honest_8]), rel=1e-9)


def test_a_reply_without_a_release_is_dropped_and_counted_at_its_plan(fakes, caplog):
    checks = ReplyCheck(privacy_plan=lambda n: PLAN, accountant="rdp")
    w = {"w": np.zeros((2, 2), np.float32)}
    msg = sent_to(checks, 1, [7], w, fakes)[7]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        checks.check_train(1, [fakes.reply(msg, w, **{keys.NUM_EXAMPLES: 150})], w)
    assert next(r.getMessage() for r in caplog.records if r.name == LOGGER) == (
        "node 7: reports no valid 'noise-multiplier', 'sample-rate' and "
        "'dp-round-steps': its DP-SGD release cannot be checked; update dropped"
    )
    assert checks.privacy_record.history(7).opacus_history == [PLAN.round_entry]


def test_an_under_reporting_node_is_dropped_and_still_recorded(fakes, caplog):
    checks = ReplyCheck(privacy_plan=lambda n: PLAN, accountant="rdp")
    w = {"w": np.zeros((2, 2), np.float32)}

    def play(server_round, under_report):
        msgs = sent_to(checks, server_round, [7, 8], w, fakes)
        record = checks.privacy_record
        replies = [
            fakes.reply(msgs[7], w, **honest_report(record, 7)),
            fakes.reply(
                msgs[8],
                w,
                **honest_report(
                    record, 8, **({keys.EPSILON: 0.01} if under_report else {})
                ),
            ),
        ]
        return msgs, checks.check_train(server_round, replies, w)

    play(1, under_report=False)
    checks.privacy_record.add(7, 1, PLAN.round_entry, 1e-4)  # node 7 released twice
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        msgs, checked = play(2, under_report=True)
    # Round 2's messages carried each node its own record (Flower's strategy
    # gives all messages one RecordDict: it must not be shared).
    assert msgs[7].content["config"][keys.RECORD_ROUNDS] == [1, 1]
    assert msgs[8].content["config"][keys.RECORD_ROUNDS] == [1]
    assert msgs[7].content["arrays"] is msgs[8].content["arrays"]
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert lines == [
        "node 8: reports ε = 0.01, below the coordinator's record "
        f"{opacus_epsilon([PLAN.round_entry] * 2):.6g}; update dropped"
    ]
    assert len(checked.kept) == 1 and checked.dropped == 1
    rows = {row["node-id"]: row for row in checked.clients}
    # Its release counts anyway, and the ε reported for it is the coordinator's.
    expected = opacus_epsilon([PLAN.round_entry] * 2)
    assert checks.privacy_record.history(8).total_steps == 20
    assert rows[8]["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert rows[8]["epsilon-reported"] == 0.01
    assert rows[7]["epsilon-coordinator"] == pytest.approx(
        opacus_epsilon([PLAN.round_entry] * 3), rel=1e-9
    )
    # A resumed coordinator continues the record from the checkpointed state.
    resumed = ReplyCheck(privacy_plan=lambda n: PLAN)
    resumed.load_state_dict(checks.state_dict())
    assert resumed.privacy_record == checks.privacy_record

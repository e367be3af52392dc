"""The round loop: Flower's strategy decides, this loop drives and records.

Flower's ``Strategy.start`` always begins at round 1 and keeps its history in
memory; fedge drives the same strategy hooks (``configure_train``,
``aggregate_train``, ``configure_evaluate``, ``aggregate_evaluate``) itself so
that each round is recorded and checkpointed as it ends and a run can resume.

The loop also decides, before a round's per-client evaluation, whether that
round ends the run (the last planned round, or an early stop such as every
node's privacy budget spent), so that every run that ends with a model has its
model scored on every node.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedge.server.frozen_arrays import ArraysWire
from fedge.server.reply_check import ReplyCheck, TrainCheck
from fedge.server.reply_errors import common_failure, describe_error
from fedge.server.update_validation import as_numpy_arrays
from fedge.shared import keys
from fedge.shared.errors import FedgeError

logger = logging.getLogger(__name__)

CentralEval = Callable[[int, ArrayRecord], dict[str, float]]
# What records a finished round (server.round_end.RoundEnd in a run).
OnRoundEnd = Callable[["RoundOutcome"], None]
# Per-client evaluation of a round's global model; None when the round is not due.
# (round, global arrays, nodes that did not answer the round's training,
#  whether this round ends the run)
ClientEval = Callable[
    [int, ArrayRecord, frozenset[int], bool], list[dict[str, Any]] | None
]
# Why the run must stop after this round (its model is kept), or None to go on.
StopCheck = Callable[["RoundOutcome"], str | None]


class StopRun(FedgeError, RuntimeError):
    """The run ends before its last round, cleanly: the model so far is kept."""

    def __init__(self, message: str, arrays: ArrayRecord) -> None:
        super().__init__(message)
        self.arrays = arrays


@dataclass
class RoundOutcome:
    """What one round produced: the one carrier of its facts.

    The metrics row, the per-client details, the stop check and the checkpoint
    all read the round from here.

    Attributes
    ----------
    sampled, sampled_nodes
        How many nodes were sent a train message, and which.
    replies : int
        Train replies with content (kept, dropped or refused).
    failures : int
        Error replies plus nodes that never replied.
    dropped, refused : int
        Replies the checks dropped (:mod:`fedge.server.reply_check`), and
        refusals (privacy budget spent).
    aggregated : int
        Replies in the new global model; 0 when the round left it unchanged.
    clients : list of dict
        One row per reply with content (:class:`~fedge.server.reply_check.TrainCheck`).
    """

    server_round: int
    arrays: ArrayRecord
    central: dict[str, float]
    train_metrics: dict[str, float] = field(default_factory=dict)
    evaluate_metrics: dict[str, float] = field(default_factory=dict)
    sampled: int = 0
    sampled_nodes: list[int] = field(default_factory=list)
    replies: int = 0
    failures: int = 0
    dropped: int = 0
    refused: int = 0
    aggregated: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    round_time_s: float = 0.0
    clients: list[dict[str, Any]] = field(default_factory=list)
    client_evaluation: list[dict[str, Any]] | None = None
    client_evaluation_s: float = 0.0
    # One line per error reply (server.reply_errors.describe_error).
    reply_errors: list[str] = field(default_factory=list)
    # Whether the round aggregated an update into a new global model.
    updated: bool = False

    def count_train(self, checked: TrainCheck, received: int) -> None:
        """Take the counts and rows of the round's checked train replies.

        ``received`` is how many replies came back, error replies included.
        """
        self.replies = checked.replies
        self.failures = len(checked.errors) + max(0, self.sampled - received)
        self.dropped = checked.dropped
        self.refused = checked.refused
        self.clients = checked.clients


def run_rounds(
    grid: Grid,
    strategy: Strategy,
    *,
    arrays: ArrayRecord,
    first_round: int,
    last_round: int,
    train_config: ConfigRecord,
    evaluate_config: ConfigRecord,
    reply_timeout_s: float,
    central_eval: CentralEval,
    on_round_end: OnRoundEnd,
    federated_evaluation: bool,
    checks: ReplyCheck | None = None,
    client_eval: ClientEval | None = None,
    stop_check: StopCheck | None = None,
    wire: ArraysWire | None = None,
) -> ArrayRecord:
    """Run rounds ``first_round..last_round`` and return the final global arrays.

    ``on_round_end`` is called after every round with its :class:`RoundOutcome`
    (after central evaluation), which is where metrics and checkpoints are written.
    ``checks`` checks every reply before the strategy sees it (by default only
    what Flower needs to aggregate, :class:`~fedge.server.reply_check.ReplyCheck`).
    ``client_eval``, when given, scores the round's global model on every node
    (:mod:`fedge.server.client_evaluation`) on the rounds it says are due; it is told
    whether the round ends the run. ``stop_check``, when given, is asked after
    each round's aggregation whether the run must stop there. ``wire``, when
    given, keeps frozen arrays out of the strategy and off the wire after a
    node has them (:mod:`fedge.server.frozen_arrays`); ``arrays`` and what the
    callbacks get are always the full model.

    Raises
    ------
    StopRun
        After the round ``stop_check`` stopped (recorded by ``on_round_end``
        first), carrying that round's global arrays.
    """
    wire = wire or ArraysWire()
    checks = checks or ReplyCheck()
    for server_round in range(first_round, last_round + 1):
        started = time.monotonic()
        outcome = RoundOutcome(server_round=server_round, arrays=arrays, central={})
        sent_arrays = wire.split(arrays)
        messages = list(
            strategy.configure_train(
                server_round, sent_arrays, ConfigRecord(dict(train_config)), grid
            )
        )
        checks.send_records(messages)
        outcome.sampled = len(messages)
        outcome.sampled_nodes = [m.metadata.dst_node_id for m in messages]
        replies, sent = wire.exchange(grid, messages, timeout_s=reply_timeout_s)
        outcome.bytes_sent = sum(_message_bytes(m) for m in sent)
        outcome.bytes_received = sum(
            _message_bytes(m) for m in replies if not m.has_error()
        )
        outcome.reply_errors = [
            describe_error(m.error.reason or "") for m in replies if m.has_error()
        ]
        checked = checks.check_train(
            server_round, replies, as_numpy_arrays(sent_arrays)
        )
        outcome.count_train(checked, received=len(replies))
        new_arrays, train_metrics = (
            # Error replies go along so the strategy reacts as Flower does
            # (FedAvg skips them; the central-DP wrapper skips the round).
            strategy.aggregate_train(server_round, checked.kept + checked.errors)
            if checked.enough
            else (None, None)
        )
        outcome.updated = new_arrays is not None
        if new_arrays is not None:
            arrays = wire.merge(new_arrays)
            outcome.aggregated = len(checked.kept)
        else:
            _warn_no_update(outcome)
        outcome.train_metrics = _scalars(train_metrics)
        if federated_evaluation:
            eval_messages = list(
                strategy.configure_evaluate(
                    server_round,
                    wire.split(arrays),
                    ConfigRecord(dict(evaluate_config)),
                    grid,
                )
            )
            eval_replies, _ = wire.exchange(
                grid, eval_messages, timeout_s=reply_timeout_s
            )
            kept, errors = checks.check_evaluate(eval_replies)
            outcome.evaluate_metrics = _scalars(
                strategy.aggregate_evaluate(server_round, kept + errors)
                if kept
                else None
            )
        outcome.arrays = arrays
        stop = stop_check(outcome) if stop_check is not None else None
        if client_eval is not None:
            evaluation_started = time.monotonic()
            outcome.client_evaluation = client_eval(
                server_round,
                arrays,
                _unanswered(messages, replies),
                stop is not None or server_round == last_round,
            )
            outcome.client_evaluation_s = time.monotonic() - evaluation_started
        outcome.central = central_eval(server_round, arrays)
        outcome.round_time_s = time.monotonic() - started
        on_round_end(outcome)
        if stop is not None:
            raise StopRun(stop, arrays)
    return arrays


def _warn_no_update(outcome: RoundOutcome) -> None:
    """Log the round that left the model unchanged, once, with why when known.

    When every sampled node failed with the same error this one line says so
    (with the likely cause) instead of leaving the reader to the node's
    repeated tracebacks.
    """
    failure = common_failure(outcome.sampled, outcome.reply_errors)
    if failure is None:
        logger.warning(
            "Round %d: no update was aggregated; the global model is unchanged.",
            outcome.server_round,
        )
        return
    logger.warning(
        "Round %d: %s; no update was aggregated, the global model is unchanged.",
        outcome.server_round,
        failure,
    )


def _unanswered(sent: list[Message], replies: list[Message]) -> frozenset[int]:
    """Return the nodes sent a message that gave no reply or an error."""
    answered = {int(m.metadata.src_node_id) for m in replies if not m.has_error()}
    return frozenset(int(m.metadata.dst_node_id) for m in sent) - answered


def _scalars(record: MetricRecord | None) -> dict[str, float]:
    """Return the aggregated metrics that are numbers (what a metrics row can hold)."""
    if record is None:
        return {}
    return {
        k: float(v)
        for k, v in record.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _message_bytes(message: Message) -> int:
    """Bytes of model arrays a message carries (what dominates the traffic).

    Flower's ``ArrayRecord.count_bytes``: each array's serialised bytes as they
    go on the wire (NumPy's ``.npy`` format, header included) plus its name.
    """
    if message.has_error() or keys.ARRAYS not in message.content:
        return 0
    return int(message.content[keys.ARRAYS].count_bytes())

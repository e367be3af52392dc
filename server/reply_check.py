"""Every check a reply passes before it may join the aggregate, in one place.

The round loop (:func:`fedge.server.federation_loop.run_rounds`) hands each
round's replies to :class:`ReplyCheck` before the strategy sees them, so the
checks also run before Flower's central-DP wrapper clips the updates. A train
reply is, in this order:

- an error reply (Flower's): passed along, so the strategy reacts as Flower
  does (FedAvg skips it; the central-DP wrapper skips the round);
- a refusal (the node's privacy budget is spent): set aside, logged once per
  node for the run;
- under sample-level DP, admitted to the coordinator's privacy record
  (:meth:`fedge.server.privacy_record.PrivacyRecord.admit`: its release is
  recorded and its ε computed, once), and dropped when its report contradicts
  the record or its plan;
- dropped when its structure or arrays do not fit the global model
  (:func:`fedge.server.update_validation.validate_reply`), or when its metric
  names differ from the others' (Flower would end the run on those);
- else kept.

Each dropped reply is logged in one line naming its node. What the check found
(the kept replies, one row per client, the counts) is a :class:`TrainCheck`,
which the loop puts on the round's outcome: the one carrier of a round's facts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp.strategy import Strategy

from fedge.server.privacy_record import PrivacyRecord
from fedge.server.update_validation import (
    is_refusal,
    metric_key_problems,
    validate_reply,
)
from fedge.shared import keys
from fedge.shared.config import RunConfig
from fedge.shared.privacy_plan import PrivacyPlan, plan_for_config
from fedge.shared.run_folder import (
    AGGREGATED,
    DROPPED,
    EPSILON_COORDINATOR,
    EPSILON_REPORTED,
    REFUSED,
)

logger = logging.getLogger(__name__)


@dataclass
class TrainCheck:
    """What the check of one round's train replies found.

    Attributes
    ----------
    kept : list of Message
        The usable replies, in partition order: what the strategy aggregates.
    errors : list of Message
        Flower's error replies, in partition order.
    clients : list of dict
        One row per reply with content: ``node-id``, ``status`` in
        {"aggregated", "dropped", "refused"}, ``problem`` when dropped, and the
        reply's scalar metrics (under sample-level DP, ``epsilon`` is the
        coordinator's figure when larger, the node's beside it).
    dropped, refused : int
        Replies dropped, and refusals set aside.
    enough : bool
        Whether the kept replies reach ``min-replies``; if not, the round
        leaves the global model as it was.
    """

    kept: list[Message]
    errors: list[Message]
    clients: list[dict[str, Any]]
    dropped: int
    refused: int
    enough: bool

    @property
    def replies(self) -> int:
        """Replies with content (each has its row): kept, dropped or refused."""
        return len(self.clients)


@dataclass(kw_only=True, eq=False)
class ReplyCheck:
    """The checks every reply of the run passes, and what they remember.

    Parameters
    ----------
    max_update_norm : float, default 0.0
        Drop updates further than this (L2) from the global model; 0 = no bound.
    min_replies : int, default 1
        Fewer usable train replies than this leave the global model unchanged
        for the round.
    weighted_by_key : str, default "num-examples"
        The metric the strategy weights replies by (must be a positive number).
    arrayrecord_key : str, default "arrays"
        Where a train reply must carry its arrays.
    privacy_plan : callable, optional
        Sample-level DP: a node's plan from its number of examples
        (:func:`fedge.shared.privacy_plan.plan_for_config`). Then the check keeps
        :attr:`privacy_record`, sends each node its record and admits every
        train reply to it.
    accountant : {"rdp", "prv"}, default "rdp"
        Opacus accountant of the record's ε.

    Attributes
    ----------
    privacy_record : PrivacyRecord or None
        The coordinator's record of every node's releases (sample-level DP only).
    """

    max_update_norm: float = 0.0
    min_replies: int = 1
    weighted_by_key: str = keys.NUM_EXAMPLES
    arrayrecord_key: str = keys.ARRAYS
    privacy_plan: Callable[[int], PrivacyPlan] | None = None
    accountant: str = "rdp"
    privacy_record: PrivacyRecord | None = field(init=False, default=None)
    _refusals_logged: set[int] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        """Start the coordinator's privacy record under sample-level DP."""
        if self.privacy_plan is not None:
            self.privacy_record = PrivacyRecord()

    @classmethod
    def from_config(cls, config: RunConfig, strategy: Strategy) -> ReplyCheck:
        """Build the checks of ``config`` for replies ``strategy`` (Flower's) aggregates."""

        def plan(num_examples: int) -> PrivacyPlan:
            return plan_for_config(config=config, num_examples=num_examples)

        return cls(
            max_update_norm=config.run.max_update_norm,
            min_replies=config.run.min_replies,
            weighted_by_key=getattr(strategy, "weighted_by_key", keys.NUM_EXAMPLES),
            arrayrecord_key=getattr(strategy, "arrayrecord_key", keys.ARRAYS),
            privacy_plan=plan if config.dp.mode == "sample" else None,
            accountant=config.dp.accountant,
        )

    # ---------------------------------------------------------------- training
    def send_records(self, messages: list[Message]) -> None:
        """Give each train message its node's privacy record (sample-level DP).

        The node takes, round by round, the larger of its own ledger and this
        record, so a wiped or edited ledger does not restart its ε.
        """
        if self.privacy_record is None:
            return
        for msg in messages:
            recorded = self.privacy_record.to_message_config(msg.metadata.dst_node_id)
            if recorded and keys.CONFIG in msg.content.config_records:
                # Flower's strategies give every message the same RecordDict:
                # each gets its own, sharing the arrays, with its own config.
                content = RecordDict(dict(msg.content.items()))
                shared_config = msg.content.config_records[keys.CONFIG]
                content[keys.CONFIG] = ConfigRecord({**shared_config, **recorded})
                msg.content = content

    def check_train(
        self,
        server_round: int,
        replies: Iterable[Message],
        reference: dict[str, np.ndarray],
    ) -> TrainCheck:
        """Check a round's train replies against the global arrays ``reference``.

        Parameters
        ----------
        server_round : int
        replies : iterable of Message
            The round's replies, error replies included, in any order.
        reference : dict of str to ndarray
            The global arrays the nodes were sent this round.
        """
        replies = in_partition_order(replies)
        # Usable replies with the coordinator's ε of their node (None: no DP).
        usable: list[tuple[Message, float | None]] = []
        clients: list[dict[str, Any]] = []
        refused = dropped = 0
        for msg in (m for m in replies if not m.has_error()):
            node_id = msg.metadata.src_node_id
            if is_refusal(msg.content):
                refused += 1
                self._log_refusal(node_id)
                clients.append(self._row(msg, REFUSED, self._recorded_epsilon(node_id)))
                continue
            problem, epsilon = self._admit(server_round, msg)
            problem = problem or validate_reply(
                msg.content,
                reference,
                weighted_by_key=self.weighted_by_key,
                arrayrecord_key=self.arrayrecord_key,
                max_update_norm=self.max_update_norm,
            )
            if problem is None:
                usable.append((msg, epsilon))
                continue
            dropped += 1
            logger.warning("node %d: %s; update dropped", node_id, problem)
            clients.append(self._row(msg, DROPPED, epsilon, problem))
        kept: list[Message] = []
        key_problems = metric_key_problems([m.content for m, _ in usable])
        for (msg, epsilon), problem in zip(usable, key_problems, strict=True):
            if problem is None:
                kept.append(msg)
                clients.append(self._row(msg, AGGREGATED, epsilon))
            else:
                dropped += 1
                logger.warning(
                    "node %d: %s; update dropped", msg.metadata.src_node_id, problem
                )
                clients.append(self._row(msg, DROPPED, epsilon, problem))
        enough = len(kept) >= self.min_replies
        if not enough:
            logger.warning(
                "round %d: %d usable replies, fewer than min-replies = %d; the "
                "global model stays as it was",
                server_round,
                len(kept),
                self.min_replies,
            )
        return TrainCheck(
            kept=kept,
            errors=[m for m in replies if m.has_error()],
            clients=clients,
            dropped=dropped,
            refused=refused,
            enough=enough,
        )

    # -------------------------------------------------------------- evaluation
    def check_evaluate(
        self, replies: Iterable[Message]
    ) -> tuple[list[Message], list[Message]]:
        """Drop evaluation replies Flower could not aggregate (one line each).

        Returns
        -------
        (kept, errors)
            The usable replies and Flower's error replies, in partition order.
        """
        replies = in_partition_order(replies)
        candidates = [
            m for m in replies if not m.has_error() and not is_refusal(m.content)
        ]
        problems = [
            validate_reply(m.content, None, weighted_by_key=self.weighted_by_key)
            for m in candidates
        ]
        usable = [m for m, p in zip(candidates, problems, strict=True) if p is None]
        key_problems = metric_key_problems([m.content for m in usable])
        kept = [m for m, p in zip(usable, key_problems, strict=True) if p is None]
        for msg, problem in [
            *zip(candidates, problems, strict=True),
            *zip(usable, key_problems, strict=True),
        ]:
            if problem is not None:
                logger.warning(
                    "node %d: %s; evaluation dropped", msg.metadata.src_node_id, problem
                )
        return kept, [m for m in replies if m.has_error()]

    # ------------------------------------------------------------------- state
    @property
    def refused_nodes(self) -> frozenset[int]:
        """Nodes that have refused to train (privacy budget spent) in this run."""
        return frozenset(self._refusals_logged)

    def state_dict(self) -> dict[str, Any]:
        """Return what the checks must remember across a resume."""
        state: dict[str, Any] = {"refusals-logged": sorted(self._refusals_logged)}
        if self.privacy_record is not None:
            state["privacy-record"] = self.privacy_record.to_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self._refusals_logged = set(state.get("refusals-logged", []))
        if self.privacy_record is not None and "privacy-record" in state:
            self.privacy_record = PrivacyRecord.from_dict(state["privacy-record"])

    # ----------------------------------------------------------------- helpers
    def _log_refusal(self, node_id: int) -> None:
        # A client past its budget refuses every later round: say so once.
        if node_id not in self._refusals_logged:
            self._refusals_logged.add(node_id)
            logger.warning(
                "node %d refused to train: its privacy budget is spent; its "
                "replies are not aggregated (reported once per node)",
                node_id,
            )

    def _admit(
        self, server_round: int, msg: Message
    ) -> tuple[str | None, float | None]:
        """Admit a train reply to the privacy record: ``(problem, ε)``; no DP: (None, None).

        The record computes the node's ε once, for its check and for the row.
        """
        if self.privacy_record is None or self.privacy_plan is None:
            return None, None
        admission = self.privacy_record.admit(
            msg.metadata.src_node_id,
            server_round,
            _scalar_metrics(msg.content),
            plan_for=self.privacy_plan,
            accountant=self.accountant,
        )
        return admission.problem, admission.epsilon

    def _recorded_epsilon(self, node_id: int) -> float | None:
        """Return the record's ε of a node that was not admitted (a refusal), or None."""
        if self.privacy_record is None:
            return None
        return self.privacy_record.epsilon(node_id, accountant=self.accountant)

    def _row(
        self,
        msg: Message,
        status: str,
        epsilon: float | None,
        problem: str | None = None,
    ) -> dict[str, Any]:
        """One client's line in the round details: node, status, scalar metrics.

        ``epsilon`` is the coordinator's ε of the node; the row reports the
        larger of it and the node's own (the node may know of a release whose
        reply the coordinator lost, and ε is never undercounted), both beside it.
        """
        row: dict[str, Any] = {"node-id": msg.metadata.src_node_id, "status": status}
        if problem is not None:
            row["problem"] = problem
        for name, value in _scalar_metrics(msg.content).items():
            row.setdefault(name, value)
        if epsilon is not None and keys.EPSILON in row:
            row[EPSILON_REPORTED] = row[keys.EPSILON]
            row[EPSILON_COORDINATOR] = epsilon
            row[keys.EPSILON] = max(epsilon, float(row[keys.EPSILON]))
        return row


def in_partition_order(replies: Iterable[Message]) -> list[Message]:
    """Return ``replies`` by partition ID, then node ID, whatever order they came in.

    Floating-point sums depend on their order: aggregating in arrival order
    made two runs with the same seeds differ in the last digits (and, rounds
    later, in a few predictions). Partition IDs are the same in every run of a
    simulation; node IDs order nodes that report none (and error replies).
    """

    def order(msg: Message) -> tuple[int, int]:
        partition = -1
        if not msg.has_error():
            value = _scalar_metrics(msg.content).get(keys.PARTITION_ID)
            if isinstance(value, int) and not isinstance(value, bool):
                partition = value
        return partition, msg.metadata.src_node_id

    return sorted(replies, key=order)


def _scalar_metrics(content: RecordDict) -> dict[str, Any]:
    """Return the reply's scalar metrics, all MetricRecords merged (first wins)."""
    metrics: dict[str, Any] = {}
    for record in content.metric_records.values():
        for name, value in record.items():
            if not isinstance(value, list):
                metrics.setdefault(name, value)
    return metrics

"""A wrapper that guards any Flower strategy against bad replies and absent nodes.

:class:`RobustStrategy` wraps a strategy from :func:`fedge.server.strategy_factory.
build_strategy` (Flower's own, possibly inside Flower's DP wrapper) the way
Flower's DP wrappers do, and adds what a long unattended run needs:

- ``configure_train``/``configure_evaluate`` wait for nodes at most
  ``node_wait_timeout_s`` (:class:`~fedge.server.node_sampling.RoundAbort` after), and
  make Flower's node sampling reproducible from ``(sampler_seed, server_round)``;
- ``aggregate_train`` checks every reply against the global arrays of the round
  (:func:`~fedge.server.update_validation.validate_reply`), logs one line per dropped
  reply naming the node, sets aside privacy-budget refusals, and hands only the
  usable replies to the wrapped strategy's own aggregation;
- ``round_stats[server_round]`` keeps the round's counts and per-client figures
  for the metrics history.

The wrapped strategy's aggregation is never re-implemented: validation sits
outside it, so it also runs before Flower's central-DP clipping.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedge.server.node_sampling import (
    NodeSnapshot,
    round_seed,
    seeded_sampling,
    wait_for_nodes,
)
from fedge.server.privacy_record import PrivacyRecord
from fedge.server.update_validation import (
    as_numpy_arrays,
    is_refusal,
    metric_key_problems,
    validate_reply,
)
from fedge.shared import keys
from fedge.shared.config import RunConfig
from fedge.shared.privacy_plan import PrivacyPlan, plan_for_config
from fedge.shared.run_folder import (
    AGGREGATED,
    CLIENTS,
    DROPPED,
    EPSILON_COORDINATOR,
    EPSILON_REPORTED,
    FAILURES,
    REFUSED,
    REPLIES,
    SAMPLED,
    SAMPLED_NODES,
)

logger = logging.getLogger(__name__)


class RobustStrategy(Strategy):
    """Validate replies, bound node waits and seed sampling around ``strategy``.

    Parameters
    ----------
    strategy : Strategy
        The strategy that samples and aggregates (Flower's).
    sampler_seed : int
        Seed of the node sampling; with the round number it fixes who is sampled.
    node_wait_timeout_s : float
        Longest wait for enough nodes before a round, in seconds.
    max_update_norm : float, default 0.0
        Drop updates further than this (L2) from the global model; 0 = no bound.
    min_replies : int, default 1
        Fewer usable train replies than this leave the global model unchanged
        for the round.
    checkpoint_dir : str or Path, optional
        Named in the error when the run ends for lack of nodes.
    poll_s : float, default 1.0
        Seconds between checks for connected nodes.
    clock, sleep : callable
        Injected for tests.
    privacy_plan : callable, optional
        Sample-level DP: a node's plan from its number of examples
        (:func:`fedge.shared.privacy_plan.plan_for_config`). Then the wrapper keeps
        :attr:`privacy_record`, sends each node its record, drops a reply that
        contradicts it (:func:`fedge.server.privacy_record.check_privacy_report`) and
        reports the ε it computes.
    accountant : {"rdp", "prv"}, default "rdp"
        Opacus accountant of that ε.

    Attributes
    ----------
    round_stats : dict of int to dict
        Per round: ``sampled``, ``sampled-nodes``, ``replies`` (replies with
        content), ``failures`` (error replies plus missing ones), ``dropped``,
        ``refused``, ``aggregated``, ``clients`` (one dict per reply: ``node-id``,
        ``status`` in {"aggregated", "dropped", "refused"}, ``problem`` when
        dropped, and the reply's scalar metrics), and, when federated evaluation
        runs, ``eval-sampled``, ``eval-replies``, ``eval-dropped``.
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        sampler_seed: int,
        node_wait_timeout_s: float,
        max_update_norm: float = 0.0,
        min_replies: int = 1,
        checkpoint_dir: str | Path | None = None,
        poll_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        privacy_plan: Callable[[int], PrivacyPlan] | None = None,
        accountant: str = "rdp",
    ) -> None:
        # Named `strategy` like Flower's DP wrappers, so code that unwraps
        # strategies (checkpoint.strategy_state) follows one attribute.
        self.strategy = strategy
        self.sampler_seed = sampler_seed
        self.node_wait_timeout_s = node_wait_timeout_s
        self.max_update_norm = max_update_norm
        self.min_replies = min_replies
        self.checkpoint_dir = checkpoint_dir
        self.poll_s = poll_s
        self._clock = clock
        self._sleep = sleep
        self.round_stats: dict[int, dict[str, Any]] = {}
        self._reference: dict[str, np.ndarray] | None = None
        self._refusals_logged: set[int] = set()
        # Sample-level DP: the coordinator's own record of every node's
        # releases, checked against each node's plan (num-examples -> plan).
        self.privacy_plan = privacy_plan
        self.accountant = accountant
        self.privacy_record = PrivacyRecord() if privacy_plan is not None else None
        # node id -> its ε by the record, computed when this round admitted it
        self._epsilons: dict[int, float | None] = {}

    @classmethod
    def from_config(
        cls,
        strategy: Strategy,
        config: RunConfig,
        *,
        checkpoint_dir: str | Path | None = None,
    ) -> RobustStrategy:
        """Wrap ``strategy`` with the run-control settings of ``config``."""

        def plan(num_examples: int) -> PrivacyPlan:
            return plan_for_config(config=config, num_examples=num_examples)

        return cls(
            strategy,
            sampler_seed=config.run.sampler_seed,
            node_wait_timeout_s=config.run.node_wait_timeout_s,
            max_update_norm=config.run.max_update_norm,
            min_replies=config.run.min_replies,
            checkpoint_dir=checkpoint_dir,
            privacy_plan=plan if config.dp.mode == "sample" else None,
            accountant=config.dp.accountant,
        )

    # ------------------------------------------------------------------ helpers
    @property
    def base(self) -> Strategy:
        """The innermost strategy (the one that samples), under any DP wrapper."""
        inner = self.strategy
        while isinstance(wrapped := getattr(inner, "strategy", None), Strategy):
            inner = wrapped
        return inner

    def _stats(self, server_round: int) -> dict[str, Any]:
        return self.round_stats.setdefault(server_round, {})

    def _sample(
        self,
        stage: str,
        server_round: int,
        grid: Grid,
        configure: Callable[[Any], Iterable[Message]],
    ) -> list[Message]:
        """Run ``configure`` on a bounded, sorted node snapshot with seeded sampling."""
        base = self.base
        fraction = getattr(base, f"fraction_{stage}", 1.0)
        if fraction == 0.0:  # Flower samples nobody: nothing to wait for
            return list(configure(grid))
        # Flower waits for max(min_available_nodes, sample size >= min_*_nodes).
        needed = max(
            getattr(base, "min_available_nodes", 1),
            getattr(base, f"min_{stage}_nodes", 1),
        )
        node_ids = wait_for_nodes(
            grid,
            min_nodes=needed,
            timeout_s=self.node_wait_timeout_s,
            poll_s=self.poll_s,
            checkpoint_dir=self.checkpoint_dir,
            clock=self._clock,
            sleep=self._sleep,
        )
        with seeded_sampling(round_seed(self.sampler_seed, server_round, stage)):
            return list(configure(NodeSnapshot(grid, node_ids)))

    def _weighted_by_key(self) -> str:
        return getattr(self.base, "weighted_by_key", keys.NUM_EXAMPLES)

    def _arrayrecord_key(self) -> str:
        return getattr(self.base, "arrayrecord_key", keys.ARRAYS)

    def _log_refusal(self, node_id: int) -> None:
        # A client past its budget refuses every later round: say so once.
        if node_id not in self._refusals_logged:
            self._refusals_logged.add(node_id)
            logger.warning(
                "node %d refused to train: its privacy budget is spent; its "
                "replies are not aggregated (reported once per node)",
                node_id,
            )

    # ---------------------------------------------------------------- training
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Wait (bounded) for nodes, sample them from the seed, keep the arrays."""
        self._reference = as_numpy_arrays(arrays)
        messages = self._sample(
            "train",
            server_round,
            grid,
            lambda g: self.strategy.configure_train(server_round, arrays, config, g),
        )
        stats = self._stats(server_round)
        stats[SAMPLED] = len(messages)
        stats[SAMPLED_NODES] = [m.metadata.dst_node_id for m in messages]
        if self.privacy_record is not None:
            for msg in messages:
                recorded = self.privacy_record.to_message_config(
                    msg.metadata.dst_node_id
                )
                if recorded and keys.CONFIG in msg.content.config_records:
                    # Flower's strategies give every message the same RecordDict:
                    # each gets its own, sharing the arrays, with its own config.
                    content = RecordDict(dict(msg.content.items()))
                    shared_config = msg.content.config_records[keys.CONFIG]
                    content[keys.CONFIG] = ConfigRecord({**shared_config, **recorded})
                    msg.content = content
        return messages

    def _check_privacy(self, server_round: int, msg: Message) -> str | None:
        """Admit a DP reply to the coordinator's record; return why it is dropped."""
        if self.privacy_record is None or self.privacy_plan is None:
            return None
        node_id = msg.metadata.src_node_id
        admission = self.privacy_record.admit(
            node_id,
            server_round,
            _scalar_metrics(msg.content),
            plan_for=self.privacy_plan,
            accountant=self.accountant,
        )
        self._epsilons[node_id] = admission.epsilon
        return admission.problem

    def _privacy_figures(self, row: dict[str, Any]) -> None:
        """Put the coordinator's ε in a client row (the node's stays beside it).

        The larger of the two is reported: the node may know of a release
        whose reply the coordinator lost, and ε is never undercounted.
        """
        record = self.privacy_record
        node_id = int(row["node-id"])
        if record is None or keys.EPSILON not in row:
            return
        if node_id in self._epsilons:  # admitted this round: ε computed then
            own = self._epsilons[node_id]
        else:  # a refusal
            own = record.epsilon(node_id, accountant=self.accountant)
        if own is None:
            return
        row[EPSILON_REPORTED] = row[keys.EPSILON]
        row[EPSILON_COORDINATOR] = own
        row[keys.EPSILON] = max(own, float(row[keys.EPSILON]))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Drop unusable replies (one log line each), then aggregate the rest."""
        if self._reference is None:
            raise RuntimeError(
                "aggregate_train was called before configure_train: the global "
                "arrays to validate replies against are unknown."
            )
        replies = in_partition_order(replies)
        errors = [m for m in replies if m.has_error()]
        self._epsilons = {}
        usable: list[Message] = []
        clients: list[dict[str, Any]] = []
        refused = dropped = 0
        for msg in (m for m in replies if not m.has_error()):
            node_id = msg.metadata.src_node_id
            if is_refusal(msg.content):
                refused += 1
                self._log_refusal(node_id)
                clients.append(_client_row(msg, REFUSED))
                continue
            problem = self._check_privacy(server_round, msg) or validate_reply(
                msg.content,
                self._reference,
                weighted_by_key=self._weighted_by_key(),
                arrayrecord_key=self._arrayrecord_key(),
                max_update_norm=self.max_update_norm,
            )
            if problem is None:
                usable.append(msg)
                continue
            dropped += 1
            logger.warning("node %d: %s; update dropped", node_id, problem)
            clients.append(_client_row(msg, DROPPED, problem))
        kept: list[Message] = []
        for msg, problem in zip(
            usable, metric_key_problems([m.content for m in usable]), strict=True
        ):
            if problem is None:
                kept.append(msg)
                clients.append(_client_row(msg, AGGREGATED))
            else:
                dropped += 1
                logger.warning(
                    "node %d: %s; update dropped", msg.metadata.src_node_id, problem
                )
                clients.append(_client_row(msg, DROPPED, problem))
        for row in clients:
            self._privacy_figures(row)
        stats = self._stats(server_round)
        sampled = stats.get(SAMPLED, len(replies))
        stats.update(
            {
                REPLIES: len(replies) - len(errors),
                FAILURES: len(errors) + max(0, sampled - len(replies)),
                DROPPED: dropped,
                REFUSED: refused,
                AGGREGATED: len(kept),
                CLIENTS: clients,
            }
        )
        if len(kept) < self.min_replies:
            logger.warning(
                "round %d: %d usable replies, fewer than min-replies = %d; the "
                "global model stays as it was",
                server_round,
                len(kept),
                self.min_replies,
            )
            stats[AGGREGATED] = 0
            return None, None
        # Error replies go along so the wrapped strategy reacts as Flower does
        # (FedAvg logs and skips them; the central-DP wrapper skips the round).
        arrays, metrics = self.strategy.aggregate_train(server_round, kept + errors)
        if arrays is not None:
            arrays = _cast_like(arrays, self._reference)
            problem = _non_finite(arrays)
            if problem is not None:
                # Each update was finite, but their aggregate overflowed (e.g. huge
                # scaled updates under FedAvg): keep the last good global model.
                logger.warning(
                    "round %d: the aggregate is not finite (%s); the global model "
                    "stays as it was",
                    server_round,
                    problem,
                )
                stats[AGGREGATED] = 0
                stats["non-finite-aggregate"] = True
                return None, metrics
        return arrays, metrics

    # -------------------------------------------------------------- evaluation
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Wait (bounded) for nodes and sample them from the seed."""
        messages = self._sample(
            "evaluate",
            server_round,
            grid,
            lambda g: self.strategy.configure_evaluate(server_round, arrays, config, g),
        )
        self._stats(server_round)["eval-sampled"] = len(messages)
        return messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Drop evaluation replies Flower could not aggregate, then aggregate."""
        replies = in_partition_order(replies)
        with_content = [m for m in replies if not m.has_error()]
        candidates = [m for m in with_content if not is_refusal(m.content)]
        problems = [
            validate_reply(m.content, None, weighted_by_key=self._weighted_by_key())
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
        stats = self._stats(server_round)
        stats["eval-replies"] = len(with_content)
        stats["eval-dropped"] = len(candidates) - len(kept)
        if not kept:
            return None
        errors = [m for m in replies if m.has_error()]
        return self.strategy.aggregate_evaluate(server_round, kept + errors)

    # ------------------------------------------------------------------- other
    def summary(self) -> None:
        """Log the guard's settings, then the wrapped strategy's."""
        logger.info(
            "RobustStrategy: sampler-seed %d, node wait <= %g s, max-update-norm %g, "
            "min-replies %d",
            self.sampler_seed,
            self.node_wait_timeout_s,
            self.max_update_norm,
            self.min_replies,
        )
        self.strategy.summary()

    @property
    def refused_nodes(self) -> frozenset[int]:
        """Nodes that have refused to train (privacy budget spent) in this run."""
        return frozenset(self._refusals_logged)

    def state_dict(self) -> dict[str, Any]:
        """Return what this wrapper must remember across a resume."""
        state: dict[str, Any] = {"refusals-logged": sorted(self._refusals_logged)}
        if self.privacy_record is not None:
            state["privacy-record"] = self.privacy_record.to_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self._refusals_logged = set(state.get("refusals-logged", []))
        if self.privacy_record is not None and "privacy-record" in state:
            self.privacy_record = PrivacyRecord.from_dict(state["privacy-record"])


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


def _client_row(
    msg: Message, status: str, problem: str | None = None
) -> dict[str, Any]:
    """One client's line in the round details: node, status, scalar metrics."""
    row: dict[str, Any] = {"node-id": msg.metadata.src_node_id, "status": status}
    if problem is not None:
        row["problem"] = problem
    for name, value in _scalar_metrics(msg.content).items():
        row.setdefault(name, value)
    return row


def _scalar_metrics(content: RecordDict) -> dict[str, Any]:
    """Return the reply's scalar metrics, all MetricRecords merged (first wins)."""
    metrics: dict[str, Any] = {}
    for record in content.metric_records.values():
        for name, value in record.items():
            if not isinstance(value, list):
                metrics.setdefault(name, value)
    return metrics


def _non_finite(arrays: ArrayRecord) -> str | None:
    """Name the first array holding NaN or infinity, or None when all are finite."""
    for name, array in arrays.items():
        values = array.numpy()
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            return f"{name!r} has {int((~np.isfinite(values)).sum())} non-finite values"
    return None


def _cast_like(arrays: ArrayRecord, reference: dict[str, np.ndarray]) -> ArrayRecord:
    """Give aggregated arrays the global model's dtypes.

    Flower's FedAdam/FedYogi/FedAdagrad return float64 for a float32 model (their
    step size is a NumPy float64); left so, the next round's replies (float32,
    from the clients' models) would no longer match the global arrays' dtype.
    """
    if all(
        name in reference and array.dtype == str(reference[name].dtype)
        for name, array in arrays.items()
    ):
        return arrays
    return ArrayRecord(
        {
            name: Array(
                array.numpy().astype(reference[name].dtype, copy=False)
                if name in reference
                else array.numpy()
            )
            for name, array in arrays.items()
        }
    )

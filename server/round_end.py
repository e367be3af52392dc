"""What the coordinator does when a round ends: record it, checkpoint it, go on or stop.

:class:`RoundEnd` is the one implementation of this work: the ServerApp's run
hands its :meth:`RoundEnd.__call__` to the round loop, and the coordinator
benchmark calls the very same object, so what it times is production code.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedge.server.checkpoint import save_checkpoint, strategy_state
from fedge.server.federation_loop import RoundOutcome
from fedge.server.metrics_history import MetricsHistory
from fedge.server.reply_check import ReplyCheck
from fedge.server.round_summary import central_epsilon, round_row, stop_reason
from fedge.shared.atomic_io import atomic_write_json
from fedge.shared.config import RunConfig
from fedge.shared.run_folder import (
    CENTRAL_DP_DELTA,
    DROPPED,
    EPSILON_MAX,
    EPSILON_MEAN,
    PRIVACY_RECORD_FILE,
    REFUSED,
    REPLIES,
    SAMPLED,
)

logger = logging.getLogger("fedge.server")


@dataclass(eq=False)
class RoundEnd:
    """The end-of-round work of one run, called once per round by the round loop.

    Parameters
    ----------
    run_dir : Path
        The run folder (checkpoints go to its ``checkpoints/``).
    config : RunConfig
        The run's config (checkpoint interval, number of rounds, DP mode).
    strategy : Strategy
        The run's strategy (its state goes into each checkpoint).
    checks : ReplyCheck
        The run's reply checks: which nodes refused (the stop check), the
        coordinator's privacy record (``privacy-record.json``), and their state
        for each checkpoint.
    history : MetricsHistory
        The run's metrics history; one row is appended per round.
    grid : Grid
        The nodes (their number enters central DP's sampling rate).
    """

    run_dir: Path
    config: RunConfig
    _: KW_ONLY
    strategy: Strategy
    checks: ReplyCheck
    history: MetricsHistory
    grid: Grid
    # When the run (or its resume) started: the log line's elapsed time.
    _started: float = field(init=False, default_factory=time.monotonic)

    def __call__(self, outcome: RoundOutcome) -> None:
        """Record the round, checkpoint it when due and log it."""
        row = self.record(outcome)
        self.checkpoint(outcome)
        self._log(outcome, row)

    def stop_reason(self, outcome: RoundOutcome) -> str | None:
        """Why the run must stop after this round, or None (the loop's ``stop_check``).

        It stops when too few nodes can still train within their privacy budget
        (:func:`fedge.server.round_summary.stop_reason`).
        """
        return stop_reason(
            self.checks.refused_nodes, self.config, outcome.server_round, self.grid
        )

    def record(self, outcome: RoundOutcome) -> dict[str, Any]:
        """Append the round's metrics row (and per-client details); return the row."""
        row, details = round_row(
            outcome, fairness_threshold=self.config.report.fairness_threshold
        )
        if self.config.dp.mode == "central":
            epsilon, delta = central_epsilon(
                self.config,
                server_round=outcome.server_round,
                sampled=row[SAMPLED],
                num_nodes=len(list(self.grid.get_node_ids())),
            )
            # One user-level ε holds for every node: it is both the max and the mean.
            row.update(
                {EPSILON_MAX: epsilon, EPSILON_MEAN: epsilon, CENTRAL_DP_DELTA: delta}
            )
        self.history.append(row, details=details)
        record = self.checks.privacy_record
        if record is not None:
            # Beside the checkpoints (which carry it too), for people and tools.
            atomic_write_json(self.run_dir / PRIVACY_RECORD_FILE, record.to_dict())
        return row

    def checkpoint(self, outcome: RoundOutcome) -> Path | None:
        """Write the round's checkpoint every ``checkpoint-interval`` rounds and last.

        Returns
        -------
        Path or None
            The checkpoint written, or None when none was due.
        """
        server_round = outcome.server_round
        last = server_round == self.config.run.num_server_rounds
        if server_round % self.config.run.checkpoint_interval != 0 and not last:
            return None
        return save_checkpoint(
            self.run_dir,
            server_round=server_round,
            arrays=outcome.arrays,
            strategy_state=strategy_state(self.strategy),
            metrics_history=self.history.rows(),
            config=self.config.to_flat(),
            rng_state={
                "sampler-seed": self.config.run.sampler_seed,
                "model-seed": self.config.train.model_seed,
            },
            reply_checks=self.checks.state_dict(),
        )

    def _log(self, outcome: RoundOutcome, row: dict[str, Any]) -> None:
        epsilon = row.get(EPSILON_MAX)
        shown_epsilon = (
            f"ε {epsilon:.2f}  "
            if isinstance(epsilon, float) and math.isfinite(epsilon)
            else ""
        )
        logger.info(
            "round %d/%d  accuracy %.4f  loss %.4f  %sreplies %d/%d  dropped %d  refused %d  %.1fs elapsed",
            outcome.server_round,
            self.config.run.num_server_rounds,
            outcome.central["accuracy"],
            outcome.central["loss"],
            shown_epsilon,
            row[REPLIES],
            row[SAMPLED],
            row[DROPPED],
            row[REFUSED],
            time.monotonic() - self._started,
        )

"""A wrapper that keeps any Flower strategy's rounds going on an unattended run.

:class:`RobustStrategy` wraps a strategy from :func:`fedge.server.strategy_factory.
build_strategy` (Flower's own, possibly inside Flower's DP wrapper) the way
Flower's DP wrappers do, and stays a strategy: it samples and aggregates, the
round loop (:mod:`fedge.server.federation_loop`) owns the round.

- ``configure_train``/``configure_evaluate`` wait for nodes at most
  ``node_wait_timeout_s`` (:class:`~fedge.server.node_sampling.RoundAbort` after), and
  make Flower's node sampling reproducible from ``(sampler_seed, server_round)``;
- ``aggregate_train`` gives the aggregate the global model's dtypes and keeps
  the global model when the aggregate is not finite.

Replies are checked before they reach it, by the round loop
(:mod:`fedge.server.reply_check`), so also before Flower's central-DP clipping.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedge.server.node_sampling import (
    NodeSnapshot,
    round_seed,
    seeded_sampling,
    wait_for_nodes,
)
from fedge.shared.config import RunConfig

logger = logging.getLogger(__name__)


class RobustStrategy(Strategy):
    """Bound node waits, seed sampling and keep the aggregate finite around ``strategy``.

    Parameters
    ----------
    strategy : Strategy
        The strategy that samples and aggregates (Flower's).
    sampler_seed : int
        Seed of the node sampling; with the round number it fixes who is sampled.
    node_wait_timeout_s : float
        Longest wait for enough nodes before a round, in seconds.
    checkpoint_dir : str or Path, optional
        Named in the error when the run ends for lack of nodes.
    poll_s : float, default 1.0
        Seconds between checks for connected nodes.
    clock, sleep : callable
        Injected for tests.
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        sampler_seed: int,
        node_wait_timeout_s: float,
        checkpoint_dir: str | Path | None = None,
        poll_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        # Named `strategy` like Flower's DP wrappers, so code that unwraps
        # strategies (checkpoint.strategy_state) follows one attribute.
        self.strategy = strategy
        self.sampler_seed = sampler_seed
        self.node_wait_timeout_s = node_wait_timeout_s
        self.checkpoint_dir = checkpoint_dir
        self.poll_s = poll_s
        self._clock = clock
        self._sleep = sleep
        # The dtypes of the arrays sent this round, which the aggregate keeps.
        self._dtypes: dict[str, str] | None = None

    @classmethod
    def from_config(
        cls,
        strategy: Strategy,
        config: RunConfig,
        *,
        checkpoint_dir: str | Path | None = None,
    ) -> RobustStrategy:
        """Wrap ``strategy`` with the run-control settings of ``config``."""
        return cls(
            strategy,
            sampler_seed=config.run.sampler_seed,
            node_wait_timeout_s=config.run.node_wait_timeout_s,
            checkpoint_dir=checkpoint_dir,
        )

    @property
    def base(self) -> Strategy:
        """The innermost strategy (the one that samples), under any DP wrapper."""
        inner = self.strategy
        while isinstance(wrapped := getattr(inner, "strategy", None), Strategy):
            inner = wrapped
        return inner

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

    # ---------------------------------------------------------------- training
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Wait (bounded) for nodes, sample them from the seed, keep the dtypes."""
        self._dtypes = {name: array.dtype for name, array in arrays.items()}
        return self._sample(
            "train",
            server_round,
            grid,
            lambda g: self.strategy.configure_train(server_round, arrays, config, g),
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate with the wrapped strategy; a non-finite aggregate is no update."""
        if self._dtypes is None:
            raise RuntimeError(
                "aggregate_train was called before configure_train: the dtypes "
                "of the global arrays are unknown."
            )
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if arrays is None:
            return None, metrics
        arrays = _cast_like(arrays, self._dtypes)
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
            return None, metrics
        return arrays, metrics

    # -------------------------------------------------------------- evaluation
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Wait (bounded) for nodes and sample them from the seed."""
        return self._sample(
            "evaluate",
            server_round,
            grid,
            lambda g: self.strategy.configure_evaluate(server_round, arrays, config, g),
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Aggregate with the wrapped strategy."""
        return self.strategy.aggregate_evaluate(server_round, replies)

    # ------------------------------------------------------------------- other
    def summary(self) -> None:
        """Log the wrapper's settings, then the wrapped strategy's."""
        logger.info(
            "RobustStrategy: sampler-seed %d, node wait <= %g s",
            self.sampler_seed,
            self.node_wait_timeout_s,
        )
        self.strategy.summary()


def _non_finite(arrays: ArrayRecord) -> str | None:
    """Name the first array holding NaN or infinity, or None when all are finite."""
    for name, array in arrays.items():
        values = array.numpy()
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            return f"{name!r} has {int((~np.isfinite(values)).sum())} non-finite values"
    return None


def _cast_like(arrays: ArrayRecord, dtypes: dict[str, str]) -> ArrayRecord:
    """Give aggregated arrays the global model's dtypes.

    Flower's FedAdam/FedYogi/FedAdagrad return float64 for a float32 model (their
    step size is a NumPy float64); left so, the next round's replies (float32,
    from the clients' models) would no longer match the global arrays' dtype.
    """
    if all(array.dtype == dtypes.get(name) for name, array in arrays.items()):
        return arrays
    return ArrayRecord(
        {
            name: Array(
                array.numpy().astype(dtypes[name], copy=False)
                if name in dtypes
                else array.numpy()
            )
            for name, array in arrays.items()
        }
    )

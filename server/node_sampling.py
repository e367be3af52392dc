"""Bounded waits for nodes, and node sampling reproducible from ``(seed, round)``.

Flower's strategies sample in ``configure_train``/``configure_evaluate`` through
``flwr.serverapp.strategy.strategy_utils.sample_nodes``, which loops "Waiting for
nodes to connect" with no time limit and then draws with the process-wide
``random`` module. :func:`wait_for_nodes` bounds the wait; :func:`seeded_sampling`
runs Flower's own draw on a sorted snapshot of the connected nodes with the
``random`` module seeded from ``(sampler_seed, server_round, stage)``, so a
resumed run samples the same nodes as an uninterrupted one (FedJAX's
``get_pseudo_random_state`` idea), and Flower's fraction/minimum rules still apply.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from fedge.shared.errors import FedgeError

logger = logging.getLogger(__name__)

STAGES = ("train", "evaluate", "client-evaluation")
_WAIT_LOG_EVERY_S = 10.0


class RoundAbort(FedgeError, RuntimeError):
    """A round cannot go ahead (e.g. too few nodes); the run ends, checkpoints stay."""


def round_seed(sampler_seed: int, server_round: int, stage: str = "train") -> int:
    """Return a 64-bit seed that depends only on ``(sampler_seed, server_round, stage)``.

    A hash rather than ``seed + round`` so that nearby seeds and rounds give
    unrelated streams; independent of Python's per-process ``hash`` salt.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    text = f"fedge-sampling/{sampler_seed}/{server_round}/{stage}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def sampling_rng(
    sampler_seed: int, server_round: int, stage: str = "train"
) -> random.Random:
    """Return a fresh ``random.Random`` for this round and stage (see :func:`round_seed`)."""
    return random.Random(round_seed(sampler_seed, server_round, stage))


@contextlib.contextmanager
def seeded_sampling(seed: int) -> Iterator[None]:
    """Seed the process-wide ``random`` module inside the block, restore it after.

    Flower draws sampled nodes with ``random.sample``; seeding it around the
    strategy's ``configure_*`` call makes that draw reproducible without
    re-implementing Flower's sampling rules.
    """
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


class NodeSnapshot:
    """A read-only view of a Grid whose ``get_node_ids`` returns a fixed sorted list.

    Handed to a strategy's ``configure_*`` so that (a) its sampling sees the same
    ordered population on every call, whatever order the SuperLink lists nodes
    in, and (b) a node dropping out between our wait and Flower's own check
    cannot send Flower back into its unbounded wait loop.
    """

    def __init__(self, grid: Any, node_ids: Iterable[int]) -> None:
        self._grid = grid
        self._node_ids = sorted(node_ids)

    def get_node_ids(self) -> list[int]:
        """Return the snapshot's node ids, sorted."""
        return list(self._node_ids)

    def __getattr__(self, name: str) -> Any:
        """Everything else is the wrapped grid's."""
        return getattr(self._grid, name)


def wait_for_nodes(
    grid: Any,
    *,
    min_nodes: int,
    timeout_s: float,
    poll_s: float = 1.0,
    checkpoint_dir: str | Path | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[int]:
    """Wait until at least ``min_nodes`` nodes are connected, for at most ``timeout_s``.

    Parameters
    ----------
    grid : Grid
        Anything with ``get_node_ids()``.
    min_nodes : int
        Nodes needed for the round.
    timeout_s : float
        Longest wait, in seconds.
    poll_s : float, default 1.0
        Seconds between checks.
    checkpoint_dir : str or Path, optional
        Named in the error so the operator knows where to resume from.
    clock, sleep : callable
        Injected for tests; default to ``time.monotonic`` and ``time.sleep``.

    Returns
    -------
    list of int
        The connected node ids, sorted.

    Raises
    ------
    RoundAbort
        When fewer than ``min_nodes`` are connected after ``timeout_s``.
    """
    deadline = clock() + timeout_s
    next_log = clock()
    while True:
        node_ids = sorted(set(grid.get_node_ids()))
        if len(node_ids) >= min_nodes:
            return node_ids
        now = clock()
        if now >= deadline:
            where = f", checkpoints kept in {checkpoint_dir}" if checkpoint_dir else ""
            raise RoundAbort(
                f"Only {len(node_ids)} of {min_nodes} nodes connected after "
                f"{timeout_s:g} s; ending the run{where}. Start the missing "
                "SuperNodes (or lower 'min-nodes') and resume the run."
            )
        if now >= next_log:
            logger.info(
                "Waiting for nodes: %d of %d connected (giving up in %.0f s)",
                len(node_ids),
                min_nodes,
                deadline - now,
            )
            next_log = now + _WAIT_LOG_EVERY_S
        sleep(min(poll_s, max(deadline - now, 0.0)))

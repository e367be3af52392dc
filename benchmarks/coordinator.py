"""The coordinator's time per round, client training excluded, by phase.

The ServerApp's own run, :func:`fedge.server.federation.run_federation`, is run as it
is: the bounded wait for nodes, the real round loop
(:func:`fedge.server.federation_loop.run_rounds`) with the real
:class:`~fedge.server.robust_strategy.RobustStrategy` around Flower's strategy for the
digits CNN, the stop check, the per-client evaluation, the metrics history, the
checkpoints and the final model, in a run folder like any run's. A fake grid
stands in for the nodes: it lists N node ids and answers each message at once
with a real Flower reply Message (to a train message, the global arrays plus a
small random perturbation, float32, with ``num-examples`` and ``train-loss``; to
an evaluate message, a node's accuracy, loss and label counts); the time it
spends building replies is the clients' and is left out of every figure. The
production functions are timed where they are called (wrapped for the run and
restored after it); per round:

- ``configure`` -- ``RobustStrategy.configure_train``: node snapshot, seeded
  sampling and Flower's message construction;
- ``validate`` -- :meth:`fedge.server.reply_check.ReplyCheck.check_train`: every
  reply checked against the global arrays;
- ``aggregate`` -- ``RobustStrategy.aggregate_train``: the wrapped Flower
  strategy's (FedAvg, FedMedian or Krum) and the cast back to the model's dtypes;
- ``stop_check`` -- :meth:`fedge.server.round_end.RoundEnd.stop_reason`: whether the
  run must stop after this round;
- ``central_eval`` -- :func:`fedge.shared.evaluation.evaluate_model` of the round's
  model on the digits test split;
- ``history`` -- :meth:`fedge.server.round_end.RoundEnd.record`: the round's metrics
  row and ``MetricsHistory.append``;
- ``checkpoint`` -- :meth:`fedge.server.round_end.RoundEnd.checkpoint`: the strategy
  state and :func:`fedge.server.checkpoint.save_checkpoint` (every round, as
  ``checkpoint-interval = 1``, the default);
- ``other`` -- what the loop does besides (bytes counted, per-client metrics,
  loading the arrays into the evaluation model, the round's log line).

Each figure is the median over the measured rounds (the machine is shared, and
the median ignores a round another process slowed down); the total is the median
of the per-round totals, so the phases need not add up to it exactly.

The per-client evaluation (:func:`fedge.server.client_evaluation.evaluate_every_node`)
runs, as by default, on the round that ends the run only: it is reported apart
as ``client_eval`` (that one round's evaluation of every node, its clients' time
left out) and is not in the round's total, as in the deployment and simulation
benchmarks.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from threadpoolctl import threadpool_limits

from benchmarks.production_timing import (
    CLIENT_EVAL,
    PHASES,
    timed_production_run,
)
from benchmarks.replying_grid import ReplyingGrid, task_identity
from fedge.server.federation import run_federation
from fedge.server.federation_loop import RoundOutcome
from fedge.server.round_end import RoundEnd
from fedge.shared.config import RunConfig, from_run_config
from fedge.shared.models import build_model, default_spec

STRATEGIES = ("fedavg", "fedmedian", "krum")
NUM_CLIENTS = (10, 100)
ROUNDS = 5
WARMUP_ROUNDS = 1
# Krum scores each update by its distances to the n - f - 2 nearest others;
# f = 2 is legal at N = 10 (needs N >= 2f + 3) and costs the same as any f.
NUM_MALICIOUS_NODES = 2
PERTURBATION_STD = 0.01


@contextlib.contextmanager
def quiet_flower() -> Iterator[None]:
    """Keep Flower's per-round INFO lines out of the benchmark's output."""
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        flwr_logger.setLevel(level)


def bench_config(
    strategy: str,
    *,
    run_dir: Path = Path("runs") / "bench",
    num_rounds: int = ROUNDS + WARMUP_ROUNDS,
) -> RunConfig:
    """Return the default run config on digits with the CNN and ``strategy``.

    The run writes to ``run_dir`` (``output-dir`` and ``run-name``).
    """
    return from_run_config(
        {
            "dataset": "digits",
            "model": "cnn",
            "strategy": strategy,
            "num-malicious-nodes": NUM_MALICIOUS_NODES if strategy == "krum" else 0,
            "num-server-rounds": num_rounds,
            "output-dir": str(run_dir.parent),
            "run-name": run_dir.name,
        },
        fill_defaults=True,
    )


@dataclass
class RoundTimes:
    """Seconds per phase of the measured rounds, and the per-client evaluation."""

    per_round: list[dict[str, float]]
    client_eval_s: float  # the evaluation of every node that ended the run


def measure_rounds(
    strategy_name: str,
    num_clients: int,
    *,
    run_dir: Path,
    rounds: int = ROUNDS,
    warmup_rounds: int = WARMUP_ROUNDS,
    seed: int = 0,
    perturbation_std: float = PERTURBATION_STD,
) -> RoundTimes:
    """Run the ServerApp's federation for ``warmup_rounds + rounds`` rounds, timed.

    Parameters
    ----------
    strategy_name : str
        A strategy name of the run config (``fedavg``, ``fedmedian``, ``krum``).
    num_clients : int
        Nodes of the fake grid; all are sampled (``fraction-train = 1``).
    run_dir : Path
        The run folder (must not hold a run yet); it is left complete, as any
        run's.
    rounds, warmup_rounds : int
        Rounds measured, after rounds run and discarded.
    seed : int, default 0
        Seed of the replies' perturbations and figures.
    perturbation_std : float, default 0.01
        Standard deviation of the noise each train reply adds to the global arrays.

    Returns
    -------
    RoundTimes
        One dict per measured round (seconds for each of :data:`PHASES`,
        ``total`` and ``client_eval``) and the last round's per-client
        evaluation.

    Raises
    ------
    RuntimeError
        When a round did not aggregate every reply (then it did not measure a
        full round), or the run ended before its last round.
    """
    config = bench_config(
        strategy_name, run_dir=run_dir, num_rounds=warmup_rounds + rounds
    )
    grid = ReplyingGrid(num_clients, seed=seed, perturbation_std=perturbation_std)

    def check_full(round_end: RoundEnd, outcome: RoundOutcome) -> None:
        # Checked as the round ends: a run that aggregated nothing may not end.
        if outcome.aggregated != num_clients:
            raise RuntimeError(
                f"{strategy_name} with {num_clients} clients aggregated "
                f"{outcome.aggregated} replies in round "
                f"{outcome.server_round}, expected all {num_clients}: the "
                "benchmark would not measure a full round"
            )

    with timed_production_run(lambda: grid.client_s, after_round=check_full) as clock:
        run_federation(grid, config)  # type: ignore[arg-type]  # a stand-in with what the run calls
    per_round = clock.rounds
    if len(per_round) != warmup_rounds + rounds:
        raise RuntimeError(
            f"{strategy_name} with {num_clients} clients ran {len(per_round)} "
            f"rounds, expected {warmup_rounds + rounds}: the run stopped early"
        )
    return RoundTimes(per_round[warmup_rounds:], per_round[-1][CLIENT_EVAL])


def summarize(times: RoundTimes, num_clients: int) -> dict[str, float]:
    """Median milliseconds per phase, in total and per client; the evaluation apart.

    ``client_eval_ms`` is the end-of-run evaluation of every node, and
    ``client_eval_per_client_ms`` that divided by N.
    """
    out = {
        f"{name}_ms": 1e3 * statistics.median(r[name] for r in times.per_round)
        for name in (*PHASES, "total")
    }
    out["total_per_client_ms"] = out["total_ms"] / num_clients
    out[f"{CLIENT_EVAL}_ms"] = 1e3 * times.client_eval_s
    out[f"{CLIENT_EVAL}_per_client_ms"] = out[f"{CLIENT_EVAL}_ms"] / num_clients
    return {k: round(v, 3) for k, v in out.items()}


def format_table(table: dict[str, dict[str, float]]) -> str:
    """Return the figures as a fixed-width text table, one line per strategy and N."""
    columns = [*PHASES, "total", "total_per_client", CLIENT_EVAL]
    header = f"{'strategy':<10} {'N':>4} " + " ".join(f"{c:>12}" for c in columns)
    lines = [header, "-" * len(header)]
    for name, row in table.items():
        strategy, n = name.rsplit("_n", 1)
        cells = " ".join(f"{row[f'{c}_ms']:>12.2f}" for c in columns)
        lines.append(f"{strategy:<10} {int(n):>4} {cells}")
    return "\n".join(lines) + (
        "\n(ms per round, median over rounds; client_eval: the end-of-run "
        "evaluation of every node, not in total)"
    )


def run(
    strategies: tuple[str, ...] = STRATEGIES,
    num_clients: tuple[int, ...] = NUM_CLIENTS,
    *,
    rounds: int = ROUNDS,
    warmup_rounds: int = WARMUP_ROUNDS,
) -> dict[str, dict[str, float]]:
    """Measure every strategy at every N; return ``{"fedavg_n10": figures, ...}``.

    Run folders go to a temporary folder that is removed afterwards.
    """
    torch.set_num_threads(1)
    table: dict[str, dict[str, float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="fedge-bench-coord-") as tmp,
        task_identity(),
        quiet_flower(),
        # NumPy's BLAS (Krum's distance matrix) on one thread too: on 2 shared
        # cores its default thread pool made a 100 x 100 Gram matrix 10-50x
        # slower and erratic.
        threadpool_limits(limits=1),
    ):
        for strategy in strategies:
            for n in num_clients:
                name = f"{strategy}_n{n}"
                times = measure_rounds(
                    strategy,
                    n,
                    run_dir=Path(tmp) / name,
                    rounds=rounds,
                    warmup_rounds=warmup_rounds,
                )
                table[name] = summarize(times, n)
    return table


def main() -> dict[str, Any]:
    """Run the benchmark, print its table and return its figures."""
    table = run()
    print(format_table(table), flush=True)
    figures: dict[str, Any] = {
        "name": "coordinator",
        "model": "cnn",
        "dataset": "digits",
        "rounds": ROUNDS,
        "warmup_rounds": WARMUP_ROUNDS,
        "parameters": sum(
            p.numel()
            for p in build_model(default_spec("cnn", (1, 8, 8), 10)).parameters()
        ),
    }
    for name, row in table.items():
        figures[f"{name}_total_ms"] = row["total_ms"]
        figures[f"{name}_per_client_ms"] = row["total_per_client_ms"]
        figures[f"{name}_client_eval_ms"] = row[f"{CLIENT_EVAL}_ms"]
    figures["table"] = table
    return figures


if __name__ == "__main__":
    print(main())

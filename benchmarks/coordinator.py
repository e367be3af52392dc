"""The coordinator's time per round, client training excluded, by phase.

The real round loop (:func:`server.federation_loop.run_rounds`) drives the real
:class:`~server.robust_strategy.RobustStrategy` around Flower's strategy for the
digits CNN. A fake grid stands in for the nodes: it lists N node ids and answers
each train message at once with a real Flower reply Message (the global arrays
plus a small random perturbation, float32, with ``num-examples`` and
``train-loss``); the time it spends building replies is the clients' and is left
out. Per round the phases are timed as the coordinator runs them:

- ``configure`` -- ``RobustStrategy.configure_train``: node snapshot, seeded
  sampling and Flower's message construction;
- ``validate`` -- ``RobustStrategy.aggregate_train`` minus the wrapped
  strategy's own aggregation: every reply checked against the global arrays;
- ``aggregate`` -- the wrapped Flower strategy's ``aggregate_train`` (FedAvg,
  FedMedian or Krum) and the cast back to the model's dtypes;
- ``central_eval`` -- loading the arrays into the model and
  :func:`shared.evaluation.evaluate_model` on the digits test split;
- ``history`` -- :meth:`server.round_end.RoundEnd.record`: the round's metrics
  row and ``MetricsHistory.append``;
- ``checkpoint`` -- :meth:`server.round_end.RoundEnd.checkpoint`: the strategy
  state and :func:`server.checkpoint.save_checkpoint` (every round, as
  ``checkpoint-interval = 1``, the default);
- ``other`` -- what the loop does besides (bytes counted, per-client metrics).

Each figure is the median over the measured rounds (the machine is shared, and
the median ignores a round another process slowed down); the total is the median
of the per-round totals, so the phases need not add up to it exactly.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from threadpoolctl import threadpool_limits

from server.federation_loop import RoundOutcome, run_rounds
from server.metrics_history import MetricsHistory
from server.reference_data import load_reference_data
from server.robust_strategy import RobustStrategy
from server.round_end import RoundEnd
from server.round_summary import initial_row
from server.strategy_factory import build_strategy
from shared import keys
from shared.config import RunConfig, from_run_config
from shared.datasets import Dataset
from shared.evaluation import evaluate_model
from shared.models import ModelSpec, build_model, default_spec
from shared.records import load_record_into, state_dict_to_record

STRATEGIES = ("fedavg", "fedmedian", "krum")
NUM_CLIENTS = (10, 100)
ROUNDS = 5
WARMUP_ROUNDS = 1
# Krum scores each update by its distances to the n - f - 2 nearest others;
# f = 2 is legal at N = 10 (needs N >= 2f + 3) and costs the same as any f.
NUM_MALICIOUS_NODES = 2
PERTURBATION_STD = 0.01
PHASES = (
    "configure",
    "validate",
    "aggregate",
    "central_eval",
    "history",
    "checkpoint",
    "other",
)


class ReplyingGrid:
    """A grid of ``num_nodes`` nodes that reply to train messages at once.

    Each reply is what a ClientApp sends back: the received arrays plus Gaussian
    noise of standard deviation ``perturbation_std`` (float32), with
    ``num-examples`` and ``train-loss`` metrics. ``client_s`` accumulates the
    seconds spent building replies, the part of a round that is not the
    coordinator's.
    """

    def __init__(
        self, num_nodes: int, *, seed: int = 0, perturbation_std: float = 0.01
    ) -> None:
        self._node_ids = list(range(1, num_nodes + 1))
        self._rng = np.random.default_rng(seed)
        self._std = perturbation_std
        self.client_s = 0.0
        self._replies: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        """Return the ids of all nodes, 1..N."""
        return list(self._node_ids)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Build one reply per message now, timed as client time; return ids."""
        started = time.perf_counter()
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            ids.append(message.metadata.message_id)
            self._replies[message.metadata.message_id] = self._reply(message)
        self.client_s += time.perf_counter() - started
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Return the replies to ``message_ids``, each handed out once."""
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def _reply(self, message: Message) -> Message:
        received = message.content.array_records[keys.ARRAYS]
        arrays = ArrayRecord(
            {
                name: Array(
                    (
                        array.numpy() + self._rng.normal(0.0, self._std, array.shape)
                    ).astype(np.float32)
                )
                for name, array in received.items()
            }
        )
        metrics = MetricRecord(
            {
                keys.NUM_EXAMPLES: int(self._rng.integers(50, 150)),
                keys.TRAIN_LOSS: float(self._rng.uniform(0.1, 2.0)),
            }
        )
        content = RecordDict({keys.ARRAYS: arrays, keys.METRICS: metrics})
        return Message(content, reply_to=message)


class PhaseClock:
    """Seconds per phase, accumulated within the current round."""

    def __init__(self) -> None:
        self.current: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the block's wall time to phase ``name`` of the current round."""
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self.current[name] = self.current.get(name, 0.0) + elapsed

    def timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` with each call timed as phase ``name`` (iterators materialised)."""

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                result = fn(*args, **kwargs)
                # configure_train may return a lazy iterator: build it here.
                return list(result) if isinstance(result, Iterator) else result

        return wrapper


@contextlib.contextmanager
def task_identity() -> Iterator[None]:
    """Give Flower's Message constructor run/node/task ids, as a ServerApp has.

    Outside a run Flower has none; the previous values (or their absence) come
    back afterwards.
    """
    saved = {}
    for name in ("run_id", "node_id", "task_id"):
        try:
            saved[name] = getattr(TaskIdentity, name)
        except RuntimeError:  # unset
            saved[name] = None
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(TaskIdentity, name, value)


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


def bench_config(strategy: str) -> RunConfig:
    """Return the default run config on digits with the CNN and ``strategy``."""
    return from_run_config(
        {
            "dataset": "digits",
            "model": "cnn",
            "strategy": strategy,
            "num-malicious-nodes": NUM_MALICIOUS_NODES if strategy == "krum" else 0,
            "num-server-rounds": ROUNDS + WARMUP_ROUNDS,
        },
        fill_defaults=True,
    )


def measure_rounds(
    strategy_name: str,
    num_clients: int,
    *,
    run_dir: Path,
    reference: Dataset,
    spec: ModelSpec,
    rounds: int = ROUNDS,
    warmup_rounds: int = WARMUP_ROUNDS,
    seed: int = 0,
    perturbation_std: float = PERTURBATION_STD,
) -> list[dict[str, float]]:
    """Run ``warmup_rounds + rounds`` rounds; return seconds per phase per round.

    Parameters
    ----------
    strategy_name : str
        A strategy name of the run config (``fedavg``, ``fedmedian``, ``krum``).
    num_clients : int
        Nodes of the fake grid; all are sampled (``fraction-train = 1``).
    run_dir : Path
        Where the metrics history and checkpoints are written.
    reference : Dataset
        The central evaluation set.
    spec : ModelSpec
        The global model.
    rounds, warmup_rounds : int
        Rounds measured, after rounds run and discarded.
    seed : int, default 0
        Seed of the replies' perturbations and example counts.
    perturbation_std : float, default 0.01
        Standard deviation of the noise each reply adds to the global arrays.

    Returns
    -------
    list of dict
        One dict per measured round: seconds for each of :data:`PHASES` and
        ``total`` (the round's wall time less the clients').

    Raises
    ------
    RuntimeError
        When the last round did not aggregate every reply (then it did not
        measure a full round).
    """
    config = bench_config(strategy_name)
    grid = ReplyingGrid(num_clients, seed=seed, perturbation_std=perturbation_std)
    strategy = RobustStrategy.from_config(
        build_strategy(config, num_nodes_hint=num_clients), config
    )
    clock = PhaseClock()
    # Instance attributes shadow the methods: the strategy chain the checkpoint
    # walks stays as in a real run.
    inner = strategy.strategy
    inner.aggregate_train = clock.timed("aggregate", inner.aggregate_train)  # type: ignore[method-assign]  # timed, same signature
    strategy.configure_train = clock.timed("configure", strategy.configure_train)  # type: ignore[method-assign]  # timed, same signature
    strategy.aggregate_train = clock.timed("aggregate_train", strategy.aggregate_train)  # type: ignore[method-assign]  # timed, same signature
    model = build_model(spec, model_seed=config.train.model_seed)
    history = MetricsHistory(run_dir)

    def central_eval(server_round: int, arrays: ArrayRecord) -> dict[str, float]:
        with clock.phase("central_eval"):
            load_record_into(model, arrays)
            return evaluate_model(model, reference.x, reference.y)

    arrays = state_dict_to_record(model.state_dict())
    history.append(initial_row(evaluate_model(model, reference.x, reference.y)))
    per_round: list[dict[str, float]] = []
    boundary = {"t": time.perf_counter(), "client_s": 0.0}

    # The server's own end-of-round work, its two costly steps timed as phases.
    round_end = RoundEnd(
        run_dir,
        config,
        strategy=strategy,
        history=history,
        grid=grid,  # type: ignore[arg-type]  # a stand-in with what RoundEnd calls
    )
    round_end.record = clock.timed("history", round_end.record)  # type: ignore[method-assign]  # timed, same signature
    round_end.checkpoint = clock.timed("checkpoint", round_end.checkpoint)  # type: ignore[method-assign]  # timed, same signature

    def on_round_end(outcome: RoundOutcome) -> None:
        round_end(outcome)
        now = time.perf_counter()
        total = now - boundary["t"] - (grid.client_s - boundary["client_s"])
        boundary.update(t=now, client_s=grid.client_s)
        times = dict(clock.current)
        clock.current = {}
        # No usable reply: the wrapped strategy is not asked to aggregate.
        times.setdefault("aggregate", 0.0)
        times["validate"] = times.pop("aggregate_train") - times["aggregate"]
        times["other"] = total - sum(times.values())
        times["total"] = total
        per_round.append(times)

    run_rounds(
        grid,  # type: ignore[arg-type]  # a stand-in with what the loop calls
        strategy,
        arrays=arrays,
        first_round=1,
        last_round=warmup_rounds + rounds,
        train_config=ConfigRecord(
            {
                keys.MODEL_SPEC: spec.to_json(),
                keys.PREPROCESSING: reference.preprocessing.to_json(),
            }
        ),
        evaluate_config=ConfigRecord(),
        reply_timeout_s=config.run.round_timeout_s,
        central_eval=central_eval,
        on_round_end=on_round_end,
        federated_evaluation=False,
    )
    stats = strategy.round_stats[warmup_rounds + rounds]
    if stats.get("aggregated") != num_clients:
        raise RuntimeError(
            f"{strategy_name} with {num_clients} clients aggregated "
            f"{stats.get('aggregated')} replies in the last round, expected all "
            f"{num_clients}: the benchmark would not measure a full round"
        )
    return per_round[warmup_rounds:]


def summarize(per_round: list[dict[str, float]], num_clients: int) -> dict[str, float]:
    """Median milliseconds per phase and in total, and the total per client."""
    out = {
        f"{name}_ms": 1e3 * statistics.median(r[name] for r in per_round)
        for name in (*PHASES, "total")
    }
    out["total_per_client_ms"] = out["total_ms"] / num_clients
    return {k: round(v, 3) for k, v in out.items()}


def format_table(table: dict[str, dict[str, float]]) -> str:
    """Return the figures as a fixed-width text table, one line per strategy and N."""
    columns = [*PHASES, "total", "total_per_client"]
    header = f"{'strategy':<10} {'N':>4} " + " ".join(f"{c:>12}" for c in columns)
    lines = [header, "-" * len(header)]
    for name, row in table.items():
        strategy, n = name.rsplit("_n", 1)
        cells = " ".join(f"{row[f'{c}_ms']:>12.2f}" for c in columns)
        lines.append(f"{strategy:<10} {int(n):>4} {cells}")
    return "\n".join(lines) + "\n(ms per round, median over rounds)"


def run(
    strategies: tuple[str, ...] = STRATEGIES,
    num_clients: tuple[int, ...] = NUM_CLIENTS,
    *,
    rounds: int = ROUNDS,
    warmup_rounds: int = WARMUP_ROUNDS,
) -> dict[str, dict[str, float]]:
    """Measure every strategy at every N; return ``{"fedavg_n10": figures, ...}``.

    Files go to a temporary folder that is removed afterwards.
    """
    torch.set_num_threads(1)
    reference = load_reference_data(bench_config("fedavg").data)
    spec = default_spec("cnn", (1, 8, 8), 10)
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
                per_round = measure_rounds(
                    strategy,
                    n,
                    run_dir=Path(tmp) / name,
                    reference=reference,
                    spec=spec,
                    rounds=rounds,
                    warmup_rounds=warmup_rounds,
                )
                table[name] = summarize(per_round, n)
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
    figures["table"] = table
    return figures


if __name__ == "__main__":
    print(main())

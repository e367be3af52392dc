"""Smoke tests of the coordinator benchmark at tiny sizes, and of its helpers."""

import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.supercore.task_identity import TaskIdentity

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import coordinator  # noqa: E402
from server.robust_strategy import RobustStrategy  # noqa: E402
from server.strategy_factory import build_strategy  # noqa: E402

FIGURES = [f"{p}_ms" for p in coordinator.PHASES] + ["total_ms"]


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Send tempfile's folders to a fresh directory, to see what is left behind."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_run_times_every_phase_and_leaves_no_files(private_tmp):
    table = coordinator.run(("fedavg", "krum"), (7,), rounds=2, warmup_rounds=1)

    assert list(table) == ["fedavg_n7", "krum_n7"]
    for row in table.values():
        for figure in FIGURES:
            assert row[figure] > 0, figure
        assert row["total_per_client_ms"] == pytest.approx(
            row["total_ms"] / 7, abs=1e-3
        )
    assert list(private_tmp.iterdir()) == []


def test_task_identity_is_set_inside_and_restored_after(monkeypatch):
    monkeypatch.setattr(TaskIdentity, "_run_id", 5)
    monkeypatch.setattr(TaskIdentity, "_node_id", 6)
    monkeypatch.setattr(TaskIdentity, "_task_id", None)

    with coordinator.task_identity():
        inside = (TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id)

    assert inside == (1, 0, 1)
    assert (TaskIdentity.run_id, TaskIdentity.node_id) == (5, 6)
    with pytest.raises(RuntimeError, match="task_id is not set"):
        TaskIdentity.task_id  # noqa: B018


def test_replies_are_the_global_arrays_plus_small_float32_noise():
    config = coordinator.bench_config("fedavg")
    strategy = RobustStrategy.from_config(
        build_strategy(config, num_nodes_hint=4), config
    )
    grid = coordinator.ReplyingGrid(4, seed=3, perturbation_std=0.01)
    sent = {"w": np.zeros((50, 40), np.float32), "b": np.ones(40, np.float32)}
    arrays = ArrayRecord({k: Array(v) for k, v in sent.items()})

    with coordinator.task_identity():
        messages = strategy.configure_train(1, arrays, ConfigRecord(), grid)
        replies = grid.pull_messages(grid.push_messages(messages))

    assert sorted(m.metadata.dst_node_id for m in messages) == [1, 2, 3, 4]
    assert [r.metadata.src_node_id for r in replies] == [
        m.metadata.dst_node_id for m in messages
    ]
    for reply in replies:
        got = {k: a.numpy() for k, a in reply.content["arrays"].items()}
        for name, value in sent.items():
            diff = got[name] - value
            assert got[name].dtype == np.float32
            # N(0, 0.01) draws: 2000 give a std within 10 %; none beyond 6 sigma
            if diff.size >= 2000:
                assert 0.009 < diff.std() < 0.011
            assert 0 < np.abs(diff).max() < 0.06
        metrics = reply.content["metrics"]
        assert 50 <= metrics["num-examples"] < 150
        assert 0.1 <= metrics["train-loss"] <= 2.0
    assert grid.client_s > 0


def test_summarize_takes_medians_and_divides_the_total_by_n():
    rounds = [
        {**dict.fromkeys(coordinator.PHASES, 0.001), "total": 0.010},
        {**dict.fromkeys(coordinator.PHASES, 0.003), "total": 0.030},
        {**dict.fromkeys(coordinator.PHASES, 0.002), "total": 0.080},
    ]

    out = coordinator.summarize(rounds, num_clients=10)

    assert out["configure_ms"] == 2.0
    assert out["total_ms"] == 30.0
    assert out["total_per_client_ms"] == 3.0


def test_a_round_that_aggregates_nothing_is_refused():
    # Infinite noise makes every reply non-finite: validation drops them all.
    with (
        coordinator.task_identity(),
        tempfile.TemporaryDirectory() as tmp,
        pytest.raises(RuntimeError, match="fedavg with 3 clients aggregated 0 replies"),
    ):
        coordinator.measure_rounds(
            "fedavg",
            3,
            run_dir=Path(tmp),
            reference=coordinator.load_reference_data(
                coordinator.bench_config("fedavg").data
            ),
            spec=coordinator.default_spec("cnn", (1, 8, 8), 10),
            rounds=1,
            warmup_rounds=0,
            perturbation_std=np.inf,
        )

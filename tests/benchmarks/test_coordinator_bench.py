"""The coordinator benchmark at tiny sizes: it times the ServerApp's own run."""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))

import fedge.server.federation  # noqa: E402
import fedge.server.round_end  # noqa: E402
from benchmarks import coordinator, production_timing, replying_grid  # noqa: E402
from fedge.server.reply_check import ReplyCheck  # noqa: E402
from fedge.server.robust_strategy import RobustStrategy  # noqa: E402
from fedge.server.round_end import RoundEnd  # noqa: E402
from fedge.server.strategy_factory import build_strategy  # noqa: E402

# Every phase but "other", which is a remainder and may round to zero or below.
TIMED = [p for p in coordinator.PHASES if p != "other"]
FIGURES = [f"{p}_ms" for p in TIMED] + ["total_ms", "client_eval_ms"]


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
        assert row["client_eval_per_client_ms"] == pytest.approx(
            row["client_eval_ms"] / 7, abs=1e-3
        )
    assert list(private_tmp.iterdir()) == []


def _measure(tmp_path, n=4, rounds=2, warmup_rounds=1, **kwargs):
    with replying_grid.task_identity():
        return coordinator.measure_rounds(
            "fedavg",
            n,
            run_dir=tmp_path / "run",
            rounds=rounds,
            warmup_rounds=warmup_rounds,
            **kwargs,
        )


def test_the_production_run_is_timed_stop_check_and_client_evaluation_included(
    tmp_path,
):
    times = _measure(tmp_path, n=4, rounds=2, warmup_rounds=1)

    run_dir = tmp_path / "run"
    # What only the ServerApp's run_federation leaves: a complete run folder.
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "complete"
    assert status["final_round"] == 3
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    # The per-client evaluation ran on the round that ends the run, every node.
    assert "client-evaluation" not in records[2]
    assert [c["node-id"] for c in records[3]["client-evaluation"]] == [1, 2, 3, 4]
    assert len(list((run_dir / "checkpoints").glob("*"))) >= 3
    # Measured: the two rounds after the warm-up; the stop check in each, the
    # per-client evaluation only in the last, and not in its total.
    assert len(times.per_round) == 2
    assert all(r["stop_check"] > 0 for r in times.per_round)
    assert times.per_round[0]["client_eval"] == 0
    assert times.per_round[1]["client_eval"] == times.client_eval_s > 0
    for r in times.per_round:
        phases = sum(r[p] for p in coordinator.PHASES)
        assert phases == pytest.approx(r["total"])


def test_a_run_the_stop_check_ends_early_is_refused(tmp_path, monkeypatch):
    # The production stop check says stop after round 1: the run ends there,
    # which a loop without the stop check would not do.
    monkeypatch.setattr(
        fedge.server.round_end,
        "stop_reason",
        lambda strategy, config, server_round, grid: "budget spent",
    )

    with pytest.raises(
        RuntimeError,
        match=r"fedavg with 4 clients ran 1 rounds, expected 3: the run stopped early",
    ):
        _measure(tmp_path)

    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "complete"
    assert status["final_round"] == 1
    assert "budget spent" in status["message"]


def _timed_functions():
    return {
        "from_config": RobustStrategy.__dict__["from_config"],
        "check_train": ReplyCheck.check_train,
        "call": RoundEnd.__call__,
        "stop_reason": RoundEnd.stop_reason,
        "record": RoundEnd.record,
        "checkpoint": RoundEnd.checkpoint,
        "evaluate_model": fedge.server.federation.evaluate_model,
        "evaluate_every_node": fedge.server.federation.evaluate_every_node,
    }


def test_the_timed_functions_are_restored_after_the_run(tmp_path):
    originals = _timed_functions()

    _measure(tmp_path, rounds=1, warmup_rounds=0)

    assert _timed_functions() == originals


def test_replacing_an_attribute_that_does_not_exist_fails_loudly():
    with (
        pytest.raises(AttributeError, match="has no attribute 'evaluate' to time"),
        production_timing.replaced(RoundEnd, "evaluate", None),
    ):
        pass


def test_a_round_ended_before_it_started_is_an_error():
    clock = production_timing.PhaseClock(lambda: 0.0)

    with pytest.raises(RuntimeError, match="end_round called before start_round"):
        clock.end_round()


def test_phases_leave_out_the_clients_time():
    now = {"s": 0.0}
    client = {"s": 0.0}
    clock = production_timing.PhaseClock(lambda: client["s"], clock=lambda: now["s"])
    clock.start_round()

    with clock.phase("configure"):
        now["s"] += 3.0
        client["s"] += 2.0  # two of those three seconds were the clients'
    with clock.phase("central_eval"):
        now["s"] += 0.5
    with clock.phase("client_eval"):
        now["s"] += 4.0
        client["s"] += 3.0
    now["s"] += 0.25  # in no phase
    clock.end_round()

    (times,) = clock.rounds
    assert times["configure"] == 1.0
    assert times["central_eval"] == 0.5
    assert times["client_eval"] == 1.0
    # 7.75 s of wall time, 5 of it the clients', 1 the per-client evaluation
    assert times["total"] == 1.75
    assert times["other"] == 0.25
    assert times["stop_check"] == 0.0


def test_task_identity_is_set_inside_and_restored_after(monkeypatch):
    monkeypatch.setattr(TaskIdentity, "_run_id", 5)
    monkeypatch.setattr(TaskIdentity, "_node_id", 6)
    monkeypatch.setattr(TaskIdentity, "_task_id", None)

    with replying_grid.task_identity():
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
    grid = replying_grid.ReplyingGrid(4, seed=3, perturbation_std=0.01)
    sent = {"w": np.zeros((50, 40), np.float32), "b": np.ones(40, np.float32)}
    arrays = ArrayRecord({k: Array(v) for k, v in sent.items()})

    with replying_grid.task_identity():
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


def test_evaluation_replies_carry_a_nodes_figures():
    grid = replying_grid.ReplyingGrid(2, seed=1)

    with replying_grid.task_identity():
        messages = [
            Message(RecordDict(), dst_node_id=n, message_type=MessageType.EVALUATE)
            for n in (1, 2)
        ]
        replies = grid.pull_messages(grid.push_messages(messages))

    assert [r.metadata.src_node_id for r in replies] == [1, 2]
    for reply in replies:
        metrics = reply.content["metrics"]
        assert 0 <= metrics["eval-accuracy"] <= 1
        assert 0.1 <= metrics["eval-loss"] <= 2.0
        assert len(metrics["label-counts"]) == 10
        assert metrics["num-examples"] == sum(metrics["label-counts"])
        assert "arrays" not in reply.content


def test_summarize_takes_medians_and_divides_the_total_by_n():
    rounds = [
        {**dict.fromkeys(coordinator.PHASES, 0.001), "total": 0.010},
        {**dict.fromkeys(coordinator.PHASES, 0.003), "total": 0.030},
        {**dict.fromkeys(coordinator.PHASES, 0.002), "total": 0.080},
    ]

    out = coordinator.summarize(
        coordinator.RoundTimes(rounds, client_eval_s=0.05), num_clients=10
    )

    assert out["configure_ms"] == 2.0
    assert out["total_ms"] == 30.0
    assert out["total_per_client_ms"] == 3.0
    assert out["client_eval_ms"] == 50.0
    assert out["client_eval_per_client_ms"] == 5.0


def test_a_round_that_aggregates_nothing_is_refused(tmp_path):
    # Infinite noise makes every reply non-finite: validation drops them all.
    with pytest.raises(
        RuntimeError,
        match="fedavg with 3 clients aggregated 0 replies in round 1, expected all 3",
    ):
        _measure(tmp_path, n=3, rounds=1, warmup_rounds=0, perturbation_std=np.inf)

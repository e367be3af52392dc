"""The simulation_overhead benchmark's arithmetic, and its in-process profile at a tiny size."""

import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))

import fedge.client.client_app  # noqa: E402
import fedge.client.private_round  # noqa: E402
from benchmarks import minimal_app  # noqa: E402
from benchmarks import simulation_overhead as bench  # noqa: E402
from benchmarks.replying_grid import task_identity  # noqa: E402


def test_ratio_startup_and_per_message_split_by_hand(monkeypatch):
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    run = bench.SimulatedRun(
        round_times_s=[5.0, 2.0, 3.0],  # steady 2.5 s; first round 2.5 s over it
        server_ready_s=1.5,
        total_s=20.0,
        peak_memory_mib=100.0,
        extra={"final_accuracy": 0.9, "client_evaluation_s": 1.2},
    )
    profile = bench.ComputeProfile(
        train_s=[0.5] * 4,  # 2 s of training on 2 slots: 1 s a round
        fedge_s=[0.02] * 4,  # 20 ms of fedge's own work per message
        serialisation_s=0.001,
        central_eval_s=0.2,  # 0.2 s a round = 100 ms per message on 2 slots / 4
    )

    figures = bench.case_figures("t", run, profile)

    assert figures["ratio_t"] == 2.5
    assert figures["startup_s_t"] == 4.0
    # 1.5 s overhead a round x 2 slots / 4 messages = 750 ms per message.
    assert figures["overhead_per_message_ms_t"] == 750.0
    assert figures["fedge_ms_per_message_t"] == pytest.approx(20.0)
    assert figures["server_ms_per_message_t"] == 100.0
    assert figures["engine_ms_per_message_t"] == pytest.approx(
        750 - 20 - 1 - 100, abs=0.1
    )
    assert figures["client_evaluation_s_t"] == 1.2


def test_the_end_of_run_evaluation_is_timed_apart_from_the_rounds():
    metrics = pd.DataFrame(
        {
            "round": [0, 1, 2, 3],
            "central-accuracy": [0.1, 0.5, 0.6, 0.7],
            "round-time-s": [None, 30.0, 2.0, 2.5 + 20.0],
            # only the last round scored every node: 1,000 of them in 20 s
            "clients-evaluated": [None, None, None, 1000],
            "client-evaluation-s": [None, None, None, 20.0],
        }
    )

    round_times_s, extra = bench.round_figures(metrics)
    run = bench.SimulatedRun(round_times_s, 1.0, 60.0, 100.0, extra=extra)

    assert round_times_s == [30.0, 2.0, 2.5]
    assert run.steady_round_s == 2.25
    assert extra == {
        "final_accuracy": 0.7,
        "client_evaluation_s": 20.0,
        "clients_evaluated": 1000,
    }
    assert bench.evaluation_figures("scale1000", run) == {
        "scale1000_clients_evaluated": 1000,
        "scale1000_client_evaluation_s": 20.0,
        "scale1000_client_evaluation_to_round": round(20.0 / 2.25, 2),
    }


def test_a_run_without_per_client_evaluation_costs_none():
    metrics = pd.DataFrame(
        {"round": [0, 1], "central-accuracy": [0.1, 0.5], "round-time-s": [None, 3.0]}
    )

    round_times_s, extra = bench.round_figures(metrics)

    assert round_times_s == [3.0]
    assert (extra["client_evaluation_s"], extra["clients_evaluated"]) == (0.0, 0)


class BodyFailed(RuntimeError):
    pass


@pytest.fixture
def process_before(monkeypatch):
    """A process state unlike the profile's: 2 torch threads, another identity.

    Yields a function that asserts the process is back in that state, and the
    functions the profile wraps, as they were.
    """
    monkeypatch.setattr(TaskIdentity, "_run_id", 5)
    monkeypatch.setattr(TaskIdentity, "_node_id", 6)
    monkeypatch.setattr(TaskIdentity, "_task_id", None)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    originals = {
        (fedge.client.client_app, "train_plain"): fedge.client.client_app.train_plain,
        (
            fedge.client.private_round,
            "train_private",
        ): fedge.client.private_round.train_private,
    }

    def assert_restored():
        assert (TaskIdentity.run_id, TaskIdentity.node_id) == (5, 6)
        with pytest.raises(RuntimeError, match="task_id is not set"):
            TaskIdentity.task_id  # noqa: B018
        assert torch.get_num_threads() == 2
        for (module, name), original in originals.items():
            assert getattr(module, name) is original, name

    yield assert_restored, originals
    torch.set_num_threads(threads)


@pytest.mark.parametrize("body_raises", [False, True])
def test_profiling_changes_the_process_inside_and_restores_it_on_exit(
    process_before, body_raises
):
    assert_restored, originals = process_before
    durations = []
    x, y = np.zeros((4, 2), np.float32), np.zeros(4, np.int64)

    with (
        pytest.raises(BodyFailed) if body_raises else contextlib.nullcontext(),
        bench.profiling_in_process(durations),
    ):
        identity = (TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id)
        threads = torch.get_num_threads()
        wrapped = [getattr(m, n) is not f for (m, n), f in originals.items()]
        fedge.client.client_app.train_plain(
            nn.Linear(2, 2),
            x,
            y,
            epochs=1,
            batch_size=2,
            learning_rate=0.1,
            momentum=0.0,
            seed=0,
        )
        if body_raises:
            raise BodyFailed("the profile failed midway")

    assert identity == (1, 0, 1) and threads == 1
    assert wrapped == [True, True]
    assert len(durations) == 1 and durations[0] > 0  # the one training call, timed
    assert_restored()


def test_a_profile_that_fails_midway_restores_the_process(process_before, monkeypatch):
    assert_restored, _ = process_before

    def failing_handler(msg, context):
        raise BodyFailed("the ClientApp failed")

    monkeypatch.setattr(fedge.client.client_app, "train", failing_handler)

    with pytest.raises(BodyFailed, match="the ClientApp failed"):
        bench.profile_clients({"local-epochs": 1}, 2)

    assert_restored()


@pytest.mark.slow
def test_profile_times_each_client_and_the_handler_around_it(process_before):
    assert_restored, _ = process_before

    profile = bench.profile_clients(
        {"local-epochs": 1, "num-server-rounds": 4, "dp-mode": "sample"}, 2
    )

    assert len(profile.train_s) == len(profile.fedge_s) == 2
    assert all(0 < t < 1 for t in profile.fedge_s)
    assert all(t > 0 for t in profile.train_s)
    assert profile.serialisation_s > 0 and profile.central_eval_s > 0
    assert_restored()


def test_minimal_ratio_is_the_minimal_apps_steady_round_over_the_same_compute(
    monkeypatch,
):
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    profile = bench.ComputeProfile(
        train_s=[0.5] * 4,  # 1 s of training a round on 2 slots
        fedge_s=[0.0] * 4,
        serialisation_s=0.0,
        central_eval_s=0.0,
    )

    # Round 1 pays the start; the steady rounds' median is 1.5 s.
    figures = bench.minimal_figures("t", [9.0, 1.5, 1.4, 2.0], profile)

    assert figures == {"minimal_ratio_t": 1.5, "minimal_round_s_t": 1.5}


class InProcessNodes:
    """A grid whose nodes answer with the minimal app's ClientApp, in this process."""

    def __init__(self, num_nodes, run_config):
        self.contexts = {
            node_id: Context(
                run_id=1,
                node_id=node_id,
                node_config={"partition-id": node_id - 1, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=run_config,
            )
            for node_id in range(1, num_nodes + 1)
        }
        self.trained = []

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for message in messages:
            node_id = message.metadata.dst_node_id
            message.metadata.__dict__["_message_id"] = f"m{node_id}"
            replies.append(minimal_app.train(message, self.contexts[node_id]))
            self.trained.append(node_id)
        return replies


def test_the_minimal_app_trains_every_node_each_round_and_writes_its_round_times(
    tmp_path,
):
    times_file = tmp_path / "times.json"
    run_config = {
        "num-server-rounds": 2,
        "local-epochs": 1,
        minimal_app.NUM_CLIENTS: 3,
        minimal_app.TIMES_FILE: str(times_file),
    }
    grid = InProcessNodes(3, run_config)
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )

    with task_identity():
        minimal_app.main(grid, context)

    assert sorted(grid.trained) == [1, 1, 2, 2, 3, 3]
    times = json.loads(times_file.read_text())
    assert len(times) == 2  # one per round, between central evaluations
    assert all(t > 0 for t in times)

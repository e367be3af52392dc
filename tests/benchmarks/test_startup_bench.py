import pytest

from benchmarks.startup import stage_seconds

LINES = [
    (2.0, "fedge simulate: 10 clients, 5 rounds, digits (iid), fedavg, dp-mode none"),
    (3.0, "INFO :      Starting Flower Simulation"),
    (6.5, "INFO fedge: round 0/5  accuracy 0.0422  loss 2.3117  (initial model)"),
    (10.0, "INFO fedge: round 1/5  accuracy 0.7267"),
    (12.0, "INFO fedge: round 5/5  accuracy 0.9644"),
    (13.5, "INFO fedge: fedge run complete: accuracy 0.9644 after round 5"),
]


def test_a_runs_seconds_are_split_at_its_progress_lines():
    stages = stage_seconds(LINES, wall_s=15.0)

    assert stages == {
        "startup_to_submit_s": 2.0,
        "startup_to_server_ready_s": 4.5,
        "startup_round1_s": 3.5,
        "rounds_after_first_s": 2.0,
        "finish_s": 1.5,
        "to_exit_s": 1.5,
    }
    assert sum(stages.values()) == pytest.approx(15.0)


def test_a_run_without_a_stage_line_is_refused():
    with pytest.raises(RuntimeError, match=r"no line for \['complete'\]"):
        stage_seconds(LINES[:-1], wall_s=15.0)

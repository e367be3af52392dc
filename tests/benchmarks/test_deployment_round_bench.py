"""The deployment_round benchmark's helpers: Flower's traffic count, the poll interval."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import deployment_round as bench  # noqa: E402

POLL = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"


def _flwr_ls(*runs):
    # The shape `flwr ls --format json` prints (flwr 1.42 cli/ls.py _to_json).
    return "📄 Listing all runs...\n" + json.dumps(
        {
            "success": True,
            "runs": [
                {
                    "run-id": run_id,
                    "status": "finished:completed",
                    "network-traffic": {
                        "inbound-bytes": inbound,
                        "outbound-bytes": outbound,
                        "total-bytes": inbound + outbound,
                    },
                }
                for run_id, inbound, outbound in runs
            ],
        }
    )


def test_traffic_is_read_per_run_sent_being_the_superlinks_outbound():
    traffic = bench.parse_run_traffic(_flwr_ls(("11", 500, 800), ("12", 7, 9)))

    assert traffic == {
        "11": bench.Traffic(sent_bytes=800, received_bytes=500),
        "12": bench.Traffic(sent_bytes=9, received_bytes=7),
    }


def test_the_new_runs_traffic_is_the_one_run_not_listed_before():
    before = bench.parse_run_traffic(_flwr_ls(("11", 500, 800)))
    after = bench.parse_run_traffic(_flwr_ls(("11", 500, 800), ("12", 7, 9)))

    assert bench.new_run_traffic(before, after) == bench.Traffic(9, 7)


@pytest.mark.parametrize("new_runs", [[], [("12", 1, 1), ("13", 2, 2)]])
def test_no_or_several_new_runs_are_refused(new_runs):
    before = bench.parse_run_traffic(_flwr_ls(("11", 500, 800)))
    after = bench.parse_run_traffic(_flwr_ls(("11", 500, 800), *new_runs))

    with pytest.raises(RuntimeError, match="expected exactly one new Flower run"):
        bench.new_run_traffic(before, after)


@pytest.mark.parametrize("operator_value", [None, "3"])
def test_the_poll_interval_is_set_inside_and_restored_after(
    monkeypatch, operator_value
):
    if operator_value is None:
        monkeypatch.delenv(POLL, raising=False)
    else:
        monkeypatch.setenv(POLL, operator_value)

    with bench.task_poll_interval(0.05):
        inside = os.environ.get(POLL)
    with bench.task_poll_interval(None):
        unset_inside = os.environ.get(POLL)

    assert inside == "0.05"
    assert unset_inside is None  # `fedge node start` then applies its default
    assert os.environ.get(POLL) == operator_value


def test_idle_cpu_counts_a_busy_child_and_not_a_sleeping_one():
    busy = subprocess.Popen(
        [sys.executable, "-c", "while True: pass"], start_new_session=True
    )
    idle = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        time.sleep(0.2)  # both started
        busy_cores = bench.idle_cpu_cores([busy.pid], window_s=1.0)
        idle_cores = bench.idle_cpu_cores([idle.pid], window_s=1.0)
    finally:
        for process in (busy, idle):
            process.kill()
            process.wait()

    # One spinning process uses up to one core (less when the machine is shared).
    assert 0.1 < busy_cores <= 1.05
    assert idle_cores < 0.05

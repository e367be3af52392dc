"""``fedge status``: a run's progress from hand-written run folders."""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path

import pytest

import fedge.cli.status as status_command
from fedge.cli.app import main
from fedge.reports.run_progress import read_progress

HEADER = "round,central-accuracy,sampled,replies,failures,dropped,refused,epsilon-max,round-time-s"


def write_run(
    run_dir: Path,
    *,
    state: str,
    rows: list[str],
    clients: dict[int, list[tuple[int, float]]] | None = None,
    run_config: dict | None = None,
    message: str = "",
) -> Path:
    """A run folder as the coordinator writes it: config, status, metrics."""
    run_dir.mkdir(parents=True)
    config = {"num-server-rounds": 5, "run-name": run_dir.name, **(run_config or {})}
    (run_dir / "config.json").write_text(json.dumps({"run-config": config}))
    (run_dir / "status.json").write_text(
        json.dumps({"state": state, "message": message})
    )
    (run_dir / "metrics.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    lines = []
    for row in rows:
        server_round = int(row.split(",")[0])
        nodes = (clients or {}).get(server_round, [])
        lines.append(
            json.dumps(
                {
                    "round": server_round,
                    "clients": [{"node-id": n, "epsilon": e} for n, e in nodes],
                }
            )
        )
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir


ROWS = [
    "0,0.10,,,,,,,",
    "1,0.50,3,3,0,0,0,1.5,10.0",
    "2,0.70,3,2,1,0,0,2.5,20.0",
    "3,0.80,3,2,1,0,0,3.0,30.0",
]
CLIENTS = {
    1: [(11, 1.5), (22, 1.4), (33, 1.2)],
    2: [(11, 2.5), (22, 2.4)],
    3: [(11, 3.0), (22, 2.9)],
}


def test_a_live_run_shows_rounds_accuracy_epsilon_and_eta(tmp_path):
    run_dir = write_run(tmp_path / "live", state="running", rows=ROWS, clients=CLIENTS)

    progress = read_progress(run_dir)

    assert progress.state == "running"
    assert (progress.rounds_done, progress.planned_rounds) == (3, 5)
    assert progress.last_accuracy == 0.80
    assert progress.epsilon_max == 3.0
    # Node 33 missed rounds 2 and 3: its latest ε is still round 1's.
    assert progress.epsilon_per_node == {"11": 3.0, "22": 2.9, "33": 1.2}
    assert [(r.round, r.sampled, r.replies, r.failures) for r in progress.rounds] == [
        (1, 3, 3, 0),
        (2, 3, 2, 1),
        (3, 3, 2, 1),
    ]
    assert progress.mean_round_time_s == pytest.approx(20.0)  # (10 + 20 + 30) / 3
    assert progress.eta_s == pytest.approx(40.0)  # 2 rounds left × 20 s
    assert progress.resume_command is None


def test_text_output_and_exit_code_of_a_live_run(tmp_path, capsys):
    run_dir = write_run(tmp_path / "live", state="running", rows=ROWS, clients=CLIENTS)

    code = main(["status", str(run_dir)])

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == f"{run_dir}: running, round 3 of 5, accuracy 0.8000, ε max 3"
    assert out[1] == "  ε per node: 11 3, 22 2.9, 33 1.2"
    assert out[-2].split() == ["3", "3", "2", "1", "0", "0", "0.8000", "3", "30.0"]
    assert out[-1] == "  20.0 s per round (recent mean); about 40 s left"


def test_a_partly_written_last_line_is_read_while_live(tmp_path):
    run_dir = write_run(tmp_path / "live", state="running", rows=ROWS, clients=CLIENTS)
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"round": 4, "clients": [{"node-id"')  # being appended right now

    progress = read_progress(run_dir)

    assert progress.rounds_done == 3
    assert progress.epsilon_per_node["11"] == 3.0


def test_a_failed_deployment_run_gives_the_flwr_run_that_resumes_it(tmp_path, capsys):
    run_dir = write_run(
        tmp_path / "outcome-v1",
        state="failed",
        rows=ROWS[:3],
        run_config={
            "num-server-rounds": 5,
            "output-dir": "/var/lib/fedge/runs",
            "dp-mode": "sample",
            "min-nodes": 2,  # the default: not repeated
        },
        message="RoundAbort: Only 1 of 2 nodes connected after 120 s",
    )
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "round-0002.pt").write_bytes(b"")

    code = main(["status", str(run_dir)])

    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert out[1] == "  RoundAbort: Only 1 of 2 nodes connected after 120 s"
    resume = out[-1].removeprefix("  resume: ")
    assert shlex.split(resume) == [
        "flwr",
        "run",
        ".",
        "<connection>",
        "--stream",
        "--run-config",
        'run-name="outcome-v1" output-dir="/var/lib/fedge/runs" dp-mode="sample" '
        "resume=true",
    ]


def test_a_failed_simulation_gives_the_fedge_simulate_that_resumes_it(tmp_path):
    run_dir = write_run(
        tmp_path / "sim",
        state="failed",
        rows=ROWS[:2],
        run_config={
            "num-server-rounds": 4,
            "output-dir": str(tmp_path),
            "local-epochs": 25,
            "node-state-dir": str((tmp_path / "sim" / "node-state").resolve()),
        },
    )
    (run_dir / "partitions.csv").write_text("client,num-examples\n0,10\n1,10\n2,10\n")
    (run_dir / "faults.json").write_text(json.dumps({"fault-dropout": 0.2}))
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "round-0001.pt").write_bytes(b"")

    progress = read_progress(run_dir)

    assert shlex.split(progress.resume_command) == [
        "fedge",
        "simulate",
        "--clients",
        "3",
        "--output-dir",
        str(tmp_path),
        "--run-name",
        "sim",
        "--set",
        "num-server-rounds=4",
        "--set",
        "local-epochs=25",
        "--set",
        "fault-dropout=0.2",
        "--set",
        "resume=true",
    ]


def test_a_failed_run_without_checkpoints_has_nothing_to_resume(tmp_path):
    run_dir = write_run(tmp_path / "early", state="failed", rows=ROWS[:1])

    assert read_progress(run_dir).resume_command is None


def test_a_run_that_trained_nothing_offers_no_resume_though_it_has_checkpoints(
    tmp_path,
):
    run_dir = write_run(
        tmp_path / "untrained",
        state="failed",
        rows=["0,0.04,,,,,,,", "1,0.04,2,0,2,0,0,,5.0"],
        message="no round aggregated an update: after round 1 (...)",
    )
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "round-0001.pt").write_bytes(b"")
    resumable = read_progress(run_dir).resume_command
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps({**status, "resumable": False}))

    progress = read_progress(run_dir)

    assert resumable is not None  # the same folder without the flag
    assert progress.resume_command is None
    assert progress.message.startswith("no round aggregated an update")


def test_json_output_has_every_round(tmp_path, capsys):
    run_dir = write_run(tmp_path / "r", state="complete", rows=ROWS, clients=CLIENTS)

    assert main(["status", str(run_dir), "--format", "json"]) == 0

    data = json.loads(capsys.readouterr().out)
    assert data["state"] == "complete"
    assert [r["round"] for r in data["rounds"]] == [1, 2, 3]
    assert data["epsilon_per_node"] == {"11": 3.0, "22": 2.9, "33": 1.2}
    assert data["eta_s"] is None  # not running


def test_watch_refreshes_until_the_run_ends(tmp_path, capsys, monkeypatch):
    run_dir = write_run(tmp_path / "r", state="running", rows=ROWS[:2])
    sleeps = []

    def finish_the_run(seconds):
        sleeps.append(seconds)
        (run_dir / "status.json").write_text(json.dumps({"state": "complete"}))

    monkeypatch.setattr(status_command.time, "sleep", finish_the_run)

    code = main(["status", str(run_dir), "--watch", "--interval", "0.5"])

    out = capsys.readouterr().out
    assert code == 0
    assert sleeps == [0.5]
    assert out.count(f"{run_dir}: running") == 1
    assert out.count(f"{run_dir}: complete") == 1


def test_a_folder_that_is_not_a_run_exits_2_with_one_line(tmp_path, capsys):
    code = main(["status", str(tmp_path)])

    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        f"fedge status: error: {tmp_path} is not a fedge run folder: it has neither "
        "status.json nor config.json. Give the folder output-dir/run-name of a run."
    ]


def _age(run_dir: Path, seconds: float) -> float:
    """Date every file of the folder ``seconds`` back; the new mtime."""
    stamp = time.time() - seconds
    for path in run_dir.rglob("*"):
        os.utime(path, (stamp, stamp))
    return stamp


def test_a_run_whose_coordinator_went_silent_is_stalled_and_resumable(tmp_path):
    run_dir = write_run(
        tmp_path / "killed",
        state="running",
        rows=ROWS,
        run_config={"round-timeout-s": 60.0, "node-wait-timeout-s": 120.0},
    )
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "round-0003.pt").write_bytes(b"")
    written = _age(run_dir, 0)
    # A live coordinator writes within node wait + round timeout + max(60 s, two
    # recent rounds): 120 + 60 + max(60, 2 × 20) = 240 s.
    before = read_progress(run_dir, now=written + 239)
    after = read_progress(run_dir, now=written + 241)

    assert (before.stalled, before.resume_command) == (False, None)
    assert after.stalled
    assert after.silent_s == pytest.approx(241)
    assert "resume=true" in after.resume_command


def test_status_reports_a_stalled_run_and_exits_1(tmp_path, capsys):
    run_dir = write_run(tmp_path / "killed", state="running", rows=ROWS)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "round-0003.pt").write_bytes(b"")
    _age(run_dir, 3600)  # defaults: 120 + 600 + 60 s at most

    code = main(["status", str(run_dir), "--watch"])  # returns: nothing will change

    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert out[-2].startswith("  stalled: nothing written for 60 min ")
    assert out[-2].endswith(
        "longer than the coordinator ever waits; it was stopped or lost"
    )
    assert out[-1].startswith("  resume: flwr run . <connection> --stream")

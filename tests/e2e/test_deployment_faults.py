"""Faults in a real secure deployment on 127.0.0.1 (TLS, SuperNode auth, DP-SGD):
a node killed and restarted mid-run, the SuperLink killed and the run resumed,
and a node that takes a message and never answers."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from simulations.flower_processes import CONNECTION, session_members, stop_process
from simulations.run_progress import read_progress
from tests.e2e.deployment import (
    APP_DIR,
    DP_ROUND_CONFIG,
    kill_session,
    last_round,
    ledger,
    ledger_epsilon,
    ledger_rounds,
    metrics_records,
    node_epsilons,
    read_json,
    secure_federation,
    start_run,
    submit_run,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _overrides(tmp_path: Path, name: str, **settings: object) -> dict[str, object]:
    return {
        **DP_ROUND_CONFIG,
        "output-dir": str(tmp_path / "runs"),
        "run-name": name,
        "node-wait-timeout-s": 60.0,
        **settings,
    }


def test_a_killed_node_is_missed_then_rejoins_with_its_ledger(tmp_path: Path) -> None:
    # (a) Three nodes, min-nodes 2: node2 dies after round 2 of 5 and is back
    # before round 4, its state-dir (and ledger) wiped meanwhile: its ε continues
    # from the coordinator's record of what it released.
    overrides = _overrides(
        tmp_path,
        "node-killed",
        **{"num-server-rounds": 5, "min-nodes": 2, "round-timeout-s": 60.0},
    )
    with secure_federation(tmp_path, 3) as federation:
        run_dir = federation.run_dir(overrides)
        victim = federation.nodes[2]
        processes = [federation.start(node) for node in federation.nodes]
        run = start_run(federation.link, tmp_path, overrides)
        try:
            wait_for(lambda: last_round(run_dir) >= 2, timeout_s=300, what="round 2")
            kill_session(processes[2])  # the node crashes: SIGKILL, no goodbye
            federation.stop(victim)
            shutil.rmtree(victim.state_dir)  # the node's disk is lost
            victim.state_dir.mkdir()
            wait_for(lambda: last_round(run_dir) >= 3, timeout_s=300, what="round 3")
            federation.start(victim)
            wait_for(
                lambda: read_json(run_dir / "status.json")["state"] != "running",
                timeout_s=300,
                what="the end of the run",
                alive=run,
            )
        finally:
            stop_process(run)

    status = read_json(run_dir / "status.json")
    assert status["state"] == "complete", status
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert list(metrics["round"]) == [0, 1, 2, 3, 4, 5]
    by_round = metrics.set_index("round")
    assert list(by_round.loc[[1, 2], "replies"]) == [3, 3]
    # Round 3 ran without node2 (asked and lost, or no longer asked).
    assert by_round.loc[3, "replies"] == 2
    assert (
        by_round.loc[3, "sampled"] - by_round.loc[3, "replies"]
        == by_round.loc[3, "failures"]
    )
    victim_id = victim.node_id
    epsilons = node_epsilons(run_dir, victim_id)
    assert {1, 2} <= set(epsilons) and 3 not in epsilons
    rejoined = sorted(r for r in epsilons if r >= 4)
    assert rejoined, f"node2 never replied after its restart: {epsilons}"
    # Its ε continues from its ledger: never back to zero, never lower.
    spent = [epsilons[r] for r in sorted(epsilons)]
    assert spent == sorted(spent) and spent[0] > 0
    assert epsilons[rejoined[0]] > epsilons[2]
    # Its new ledger starts from the coordinator's record (rounds 1 and 2), then
    # holds every round it reported since, each once.
    rounds = ledger(victim)["server-rounds"]
    assert rounds[:2] == [1, 2]
    assert rounds == sorted(set(rounds)) and set(epsilons) <= set(rounds)
    # The coordinator's ε for it is Opacus's over its own record.
    record = read_json(run_dir / "privacy-record.json")["releases"][str(victim_id)]
    (last,) = (
        c
        for c in metrics_records(run_dir)[rejoined[-1]]["clients"]
        if c["node-id"] == victim_id
    )
    released = {
        "noise-multipliers": [s for _, s, _, _ in record],
        "sample-rates": [q for _, _, q, _ in record],
        "steps": [n for *_, n in record],
    }
    assert last["epsilon-coordinator"] == pytest.approx(
        ledger_epsilon(released, last["delta"]), rel=1e-9
    )


def test_the_superlink_killed_mid_run_restarts_and_the_run_resumes(
    tmp_path: Path,
) -> None:
    # (b) Two nodes, 3 rounds; the SuperLink (and its ServerApp) is killed once
    # round 1 is checkpointed and both nodes have released round 2, restarted
    # with the same database, and the run is submitted again with resume = true.
    # Killed then, the coordinator has mostly not checkpointed round 2 yet (its
    # replies were in flight): resumed, it asks for round 2 again with the same
    # global model, and each node resends the update it released, bit for bit,
    # at no privacy cost. If the coordinator was quicker, it resumes after round
    # 2. Either way the same must hold, and the budget (ε = 8, calibrated for
    # exactly 3 rounds) covers round 3.
    overrides = _overrides(
        tmp_path, "link-killed", **{"num-server-rounds": 3, "min-nodes": 2}
    )
    with secure_federation(tmp_path, 2) as federation:
        run_dir = federation.run_dir(overrides)
        for node in federation.nodes:
            federation.start(node)
        first = start_run(federation.link, tmp_path, overrides, name="first")
        try:
            checkpoint = run_dir / "checkpoints" / "round-0001.pt"
            wait_for(checkpoint.exists, timeout_s=300, what="round 1's checkpoint")
            wait_for(
                lambda: all(2 in ledger_rounds(n) for n in federation.nodes),
                timeout_s=300,
                what="round 2 released by both nodes",
            )
            federation.kill_superlink()
        finally:
            stop_process(first)
        rounds_before = last_round(run_dir)
        epsilon_before = {
            n.name: max(node_epsilons(run_dir, n.node_id).values())
            for n in federation.nodes
        }
        # Nothing marks the folder failed: `fedge status` tells a stalled run
        # (here: as if read long after) and gives the command that resumes it.
        progress = read_progress(run_dir, now=time.time() + 3600)
        assert progress.state == "running" and progress.stalled
        command = shlex.split(progress.resume_command)
        assert command[:4] == ["flwr", "run", ".", "<connection>"]
        link = federation.restart_superlink()  # the nodes reconnect by themselves
        resumed = subprocess.run(
            [*command[:3], CONNECTION, *command[4:]],
            env=link.env,
            cwd=APP_DIR,
            capture_output=True,
            text=True,
            timeout=400,
        )

    assert 1 <= rounds_before < 3
    status = read_json(run_dir / "status.json")
    assert status["state"] == "complete", resumed.stdout[-3000:]
    assert status["final_round"] == 3
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert list(metrics["round"]) == [0, 1, 2, 3]  # none missing, none twice
    assert [r["round"] for r in metrics_records(run_dir)] == [0, 1, 2, 3]
    resumed_after = re.search(
        r"resuming after round (\d+)", resumed.stderr + resumed.stdout
    )
    assert resumed_after, resumed.stdout[-3000:]
    asked_again = int(resumed_after.group(1)) == 1  # round 2 asked for twice
    (last,) = (r for r in metrics_records(run_dir) if r["round"] == 3)
    for node in federation.nodes:
        epsilons = node_epsilons(run_dir, node.node_id)
        assert sorted(epsilons) == [1, 2, 3]
        # The ledger continues: round 3's ε is above what it was at the kill.
        assert epsilons[3] > epsilon_before[node.name]
        spent = ledger(node)
        # Every release is an entry, and round 2 asked for again was resent,
        # not released anew: each round once, round 3 trained, not refused.
        assert spent["server-rounds"] == [1, 2, 3]
        (reply,) = (c for c in last["clients"] if c["node-id"] == node.node_id)
        assert (reply["status"], reply["refused"]) == ("aggregated", 0)
        # What the node reported last is Opacus's ε over ALL its releases.
        assert reply["epsilon"] == pytest.approx(
            ledger_epsilon(spent, reply["delta"]), rel=1e-9
        )
        assert reply["epsilon"] <= DP_ROUND_CONFIG["target-epsilon"]
        node_log = (tmp_path / f"{node.name}.log").read_text(errors="replace")
        resent = "resending the update already released for it" in node_log
        assert resent == asked_again, node_log[-3000:]


def _freeze_clientapps(session: int, frozen: list[int], stop: threading.Event) -> None:
    """SIGSTOP every ``flwr-clientapp`` the node starts: it took the message,
    its node stays online (heartbeats), and its reply never comes."""
    while not stop.is_set():
        for pid in session_members(session):
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"flwr-clientapp" in cmdline and pid not in frozen:
                    os.kill(pid, signal.SIGSTOP)
                    frozen.append(pid)
        time.sleep(0.02)


def test_a_node_that_never_replies_is_cut_off_after_the_round_timeout(
    tmp_path: Path,
) -> None:
    # (d) Three nodes, one round; node2's ClientApp hangs on its message.
    timeout_s = 30.0  # well above a healthy first round on a loaded machine
    overrides = _overrides(
        tmp_path,
        "hung-node",
        **{"num-server-rounds": 1, "min-nodes": 3, "round-timeout-s": timeout_s},
    )
    frozen: list[int] = []
    stop = threading.Event()
    with secure_federation(tmp_path, 3) as federation:
        run_dir = federation.run_dir(overrides)
        for node in federation.nodes[:2]:
            federation.start(node)
        hung = federation.start(federation.nodes[2])
        watcher = threading.Thread(
            target=_freeze_clientapps, args=(hung.pid, frozen, stop), daemon=True
        )
        watcher.start()
        try:
            done = submit_run(federation.link, tmp_path, overrides, timeout_s=300)
        finally:
            stop.set()
            watcher.join()

    assert frozen, "node2 never started a ClientApp"
    status = read_json(run_dir / "status.json")
    assert status["state"] == "complete", done.stdout[-3000:]
    (row,) = metrics_records(run_dir)[1:]
    assert (row["sampled"], row["replies"], row["failures"]) == (3, 2, 1)
    assert row["aggregated"] == 2
    replied = {c["node-id"] for c in row["clients"]}
    assert replied == {n.node_id for n in federation.nodes[:2]}
    # Cut off at the timeout, not earlier (a heartbeat loss) nor much later.
    assert timeout_s <= row["round-time-s"] < timeout_s + 20

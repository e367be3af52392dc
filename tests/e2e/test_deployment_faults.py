"""Faults in a real secure deployment on 127.0.0.1 (TLS, SuperNode auth, DP-SGD):
nodes killed and restarted mid-run (one with its state folder, one with it
wiped), the SuperLink killed before it collects a round and the run resumed, and
a node that takes a message and never answers."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, cast

import pandas as pd
import pytest

from fedge.reports.run_progress import read_progress
from fedge.simulations.flower_processes import CONNECTION, session_members, stop_process
from tests.e2e.deployment import (
    APP_DIR,
    DP_ROUND_CONFIG,
    kill_all,
    kill_session,
    last_round,
    ledger,
    ledger_epsilon,
    ledger_rounds,
    log_text,
    metrics_records,
    node_epsilons,
    process_tree,
    processes_named,
    produce_once,
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


# Two of four nodes are killed after round 2 of 5 and restarted once round 3 is
# over, one with its state folder, one with it wiped: one run, checked by the
# two tests below (produced once per session, whichever worker asks first).
KILLED_RUN = "nodes-killed"
RESTART_PROBLEM = "the coordinator's record of this node's privacy spend holds more"


def _kill_two_nodes_and_restart_them(workdir: Path) -> dict[str, Any]:
    """Four nodes, min-nodes 2, five rounds; node2 (state kept) and node3 (state
    wiped) die after round 2 and are started again after round 3."""
    overrides = _overrides(
        workdir,
        KILLED_RUN,
        **{"num-server-rounds": 5, "min-nodes": 2, "round-timeout-s": 60.0},
    )
    with secure_federation(workdir, 4) as federation:
        run_dir = federation.run_dir(overrides)
        kept, wiped = federation.nodes[2:]
        processes = {node.name: federation.start(node) for node in federation.nodes}
        federation.wait_online()  # so that rounds 1 and 2 have all four
        run = start_run(federation.link, workdir, overrides)
        try:
            wait_for(lambda: last_round(run_dir) >= 2, timeout_s=300, what="round 2")
            for node in (kept, wiped):
                kill_session(processes[node.name])  # a crash: SIGKILL, no goodbye
                federation.stop(node)
            ledger_at_kill = ledger(kept)
            shutil.rmtree(wiped.state_dir)  # the node's disk is lost
            wiped.state_dir.mkdir()
            wait_for(lambda: last_round(run_dir) >= 3, timeout_s=300, what="round 3")
            restarted_at = {
                node.name: (workdir / f"{node.name}.log").stat().st_size
                for node in (kept, wiped)
            }
            federation.start(kept)
            federation.start(wiped)
            wait_for(
                lambda: read_json(run_dir / "status.json")["state"] != "running",
                timeout_s=300,
                what="the end of the run",
                alive=run,
            )
        finally:
            stop_process(run)
    return {
        "run-dir": str(run_dir),
        "ledger-at-kill": ledger_at_kill,
        "nodes": {
            node.name: {
                "node-id": node.node_id,
                "ledger": ledger(node),
                "log-after-restart": log_text(
                    workdir / f"{node.name}.log", offset=restarted_at[node.name]
                ),
            }
            for node in (kept, wiped)
        },
    }


@pytest.fixture
def killed_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The run of :func:`_kill_two_nodes_and_restart_them`, checked as a whole."""
    produced = produce_once(
        tmp_path_factory.getbasetemp(), KILLED_RUN, _kill_two_nodes_and_restart_them
    )
    run_dir = Path(produced["run-dir"])
    status = read_json(run_dir / "status.json")
    assert status["state"] == "complete", status
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert list(metrics["round"]) == [0, 1, 2, 3, 4, 5]
    by_round = metrics.set_index("round")
    assert list(by_round.loc[[1, 2], "replies"]) == [4, 4]
    # Round 3 ran without the two killed nodes (asked and lost, or not asked).
    assert by_round.loc[3, "replies"] == 2
    assert (
        by_round.loc[3, "sampled"] - by_round.loc[3, "replies"]
        == by_round.loc[3, "failures"]
    )
    return produced


def _restarted_node(
    killed_run: dict[str, Any], name: str
) -> tuple[Path, dict[str, Any], list[int]]:
    """The run folder, what was kept of node ``name``, and the rounds it
    replied to after its restart; checks it replied to rounds 1 and 2, not 3,
    and that its ε never went down."""
    run_dir = Path(killed_run["run-dir"])
    node = killed_run["nodes"][name]
    epsilons = node_epsilons(run_dir, node["node-id"])
    assert {1, 2} <= set(epsilons) and 3 not in epsilons, epsilons
    rejoined = sorted(r for r in epsilons if r >= 4)
    assert rejoined, f"no reply after the restart: {epsilons}"
    spent = [epsilons[r] for r in sorted(epsilons)]
    assert spent == sorted(spent) and spent[0] > 0
    assert epsilons[rejoined[0]] > epsilons[2]  # continued, not back to zero
    return run_dir, node, rejoined


def _last_reply(run_dir: Path, node_id: int, server_round: int) -> dict[str, Any]:
    (record,) = (r for r in metrics_records(run_dir) if r["round"] == server_round)
    (reply,) = (c for c in record["clients"] if c["node-id"] == node_id)
    return cast(dict[str, Any], reply)


def test_a_killed_node_restarted_with_its_state_folder_continues_its_own_ledger(
    killed_run: dict[str, Any],
) -> None:
    run_dir, node, rejoined = _restarted_node(killed_run, "node2")

    # The ledger file it left at the kill, entry for entry, is where its ledger
    # goes on; then every round it reported since, each once.
    before, after = killed_run["ledger-at-kill"], node["ledger"]
    assert before["server-rounds"][:2] == [1, 2]
    kept = len(before["server-rounds"])
    for entries in ("server-rounds", "noise-multipliers", "sample-rates", "steps"):
        assert after[entries][:kept] == before[entries], entries
    rounds = after["server-rounds"]
    assert rounds == sorted(set(rounds)) and set(rejoined) <= set(rounds)
    # It read its own ledger: the coordinator's record never had more to add.
    assert RESTART_PROBLEM not in node["log-after-restart"]
    assert "Starting Flower SuperNode" in node["log-after-restart"]
    # What it reported last is Opacus's ε over its own ledger file.
    last = _last_reply(run_dir, node["node-id"], rejoined[-1])
    assert last["epsilon"] == pytest.approx(
        ledger_epsilon(after, last["delta"]), rel=1e-9
    )


def test_a_killed_node_restarted_with_its_state_wiped_continues_from_the_record(
    killed_run: dict[str, Any],
) -> None:
    run_dir, node, rejoined = _restarted_node(killed_run, "node3")

    # Its empty state folder held no ledger: it took the coordinator's record of
    # its two releases, said so once, and wrote a new ledger starting from it.
    assert node["log-after-restart"].count(RESTART_PROBLEM) == 1
    assert "(2 releases, own 0;" in node["log-after-restart"]
    rounds = node["ledger"]["server-rounds"]
    assert rounds[:2] == [1, 2]
    assert rounds == sorted(set(rounds)) and set(rejoined) <= set(rounds)
    # The node's ε and the coordinator's are Opacus's over the same releases.
    record = read_json(run_dir / "privacy-record.json")["releases"]
    releases = record[str(node["node-id"])]
    released = {
        "noise-multipliers": [s for _, s, _, _ in releases],
        "sample-rates": [q for _, _, q, _ in releases],
        "steps": [n for *_, n in releases],
    }
    last = _last_reply(run_dir, node["node-id"], rejoined[-1])
    assert last["epsilon-coordinator"] == pytest.approx(
        ledger_epsilon(released, last["delta"]), rel=1e-9
    )
    assert last["epsilon"] == pytest.approx(
        ledger_epsilon(node["ledger"], last["delta"]), rel=1e-9
    )


def _freeze_serverapp_once_round_2_is_sent(
    superlink_pid: int,
    node_sessions: list[int],
    frozen: list[int],
    stop: threading.Event,
) -> None:
    """SIGSTOP the ServerApp as soon as every node has started its second
    ``flwr-clientapp``: round 2's training messages have reached the nodes, and
    no reply can have come back yet (a ClientApp takes seconds to start and
    train), so the coordinator never collects round 2."""
    started: dict[int, set[int]] = {session: set() for session in node_sessions}
    while not stop.is_set():
        for session in node_sessions:
            clientapps = processes_named(session_members(session), "flwr-clientapp")
            started[session].update(clientapps)
        if all(len(pids) >= 2 for pids in started.values()):
            # Not in the SuperLink's session: Flower starts its SuperExec in one
            # of its own.
            (serverapp,) = processes_named(
                process_tree(superlink_pid), "flwr-serverapp"
            )
            os.kill(serverapp, signal.SIGSTOP)
            frozen.append(serverapp)
            return
        time.sleep(0.02)


def test_a_round_the_coordinator_lost_is_resent_not_retrained_after_a_restart(
    tmp_path: Path,
) -> None:
    # (b) Two nodes, 3 rounds. The ServerApp is frozen once round 1 is
    # checkpointed and round 2 has reached the nodes, so it never collects round
    # 2's replies: every run, the coordinator loses them. Once both nodes have
    # released round 2, the SuperLink (and its ServerApp) is killed, restarted
    # with the same database, and the run submitted again with resume = true.
    # It resumes after round 1 and asks for round 2 again with the same global
    # model: each node resends the update it released, bit for bit, at no
    # privacy cost, and the budget (ε = 8, calibrated for exactly 3 rounds)
    # still covers round 3.
    overrides = _overrides(
        tmp_path, "link-killed", **{"num-server-rounds": 3, "min-nodes": 2}
    )
    frozen: list[int] = []
    stop = threading.Event()
    with secure_federation(tmp_path, 2) as federation:
        run_dir = federation.run_dir(overrides)
        node_sessions = [federation.start(node).pid for node in federation.nodes]
        federation.wait_online()
        watcher = threading.Thread(
            target=_freeze_serverapp_once_round_2_is_sent,
            args=(federation.link.process.pid, node_sessions, frozen, stop),
            daemon=True,
        )
        watcher.start()
        first = start_run(federation.link, tmp_path, overrides, name="first")
        try:
            wait_for(
                lambda: bool(frozen) or not watcher.is_alive(),
                timeout_s=300,
                what="round 2 sent",
            )
            assert frozen, "the ServerApp was not found to be held"
            wait_for(
                lambda: all(2 in ledger_rounds(n) for n in federation.nodes),
                timeout_s=300,
                what="round 2 released by both nodes",
            )
            federation.kill_superlink()  # the frozen ServerApp with it
        finally:
            stop.set()
            watcher.join()
            kill_all(frozen)  # never left stopped, whatever failed
            stop_process(first)
        # The coordinator had checkpointed round 1 and never saw round 2.
        assert last_round(run_dir) == 1
        checkpoints = (run_dir / "checkpoints").glob("round-*.pt")
        assert [p.name for p in checkpoints] == ["round-0001.pt"]
        released_round_2 = {n.name: ledger(n) for n in federation.nodes}
        # Nothing marks the folder failed: `fedge status` tells a stalled run
        # (here: as if read long after) and gives the command that resumes it.
        progress = read_progress(run_dir, now=time.time() + 3600)
        assert progress.state == "running" and progress.stalled
        command = shlex.split(progress.resume_command)
        assert command[:4] == ["flwr", "run", ".", "<connection>"]
        link = federation.restart_superlink()  # the nodes reconnect by themselves
        # `flwr run .` in the checkout, as the user would: the one e2e run that
        # submits the checkout itself, not a slim copy of the app. Its bundle
        # keeps fedge/ without the folders it links to, which fedge/__init__.py
        # then finds beside it, on the SuperLink's ServerApp and on each node.
        resumed = subprocess.run(
            [*command[:3], CONNECTION, *command[4:]],
            env=link.env,
            cwd=APP_DIR,
            capture_output=True,
            text=True,
            timeout=400,
        )

    status = read_json(run_dir / "status.json")
    assert status["state"] == "complete", resumed.stdout[-3000:]
    assert status["final_round"] == 3
    output = resumed.stderr + resumed.stdout
    assert "resuming after round 1" in output, output[-3000:]
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert list(metrics["round"]) == [0, 1, 2, 3]  # none missing, none twice
    assert [r["round"] for r in metrics_records(run_dir)] == [0, 1, 2, 3]
    for node in federation.nodes:
        # Round 2 asked for again was resent, not released anew: the ledger as
        # it was at the kill (rounds 1 and 2), then round 3, each once.
        at_kill, spent = released_round_2[node.name], ledger(node)
        assert at_kill["server-rounds"] == [1, 2]
        assert spent["server-rounds"] == [1, 2, 3]
        for entries in ("noise-multipliers", "sample-rates", "steps"):
            assert spent[entries][:2] == at_kill[entries], entries
        node_log = (tmp_path / f"{node.name}.log").read_text(errors="replace")
        assert node_log.count("resending the update already released for it") == 1
        assert "round 2 asked for again with the same global parameters" in node_log
        assert "trained it again" not in node_log
        # Round 2's reply carries the ε of its first release (rounds 1 and 2),
        # round 3's Opacus's ε over all three; round 3 trained, not refused.
        resent = _last_reply(run_dir, node.node_id, 2)
        assert resent["epsilon"] == pytest.approx(
            ledger_epsilon(at_kill, resent["delta"]), rel=1e-9
        )
        reply = _last_reply(run_dir, node.node_id, 3)
        assert (reply["status"], reply["refused"]) == ("aggregated", 0)
        assert reply["epsilon"] == pytest.approx(
            ledger_epsilon(spent, reply["delta"]), rel=1e-9
        )
        assert resent["epsilon"] < reply["epsilon"]
        assert reply["epsilon"] <= DP_ROUND_CONFIG["target-epsilon"]


def _freeze_clientapps(session: int, frozen: list[int], stop: threading.Event) -> None:
    """SIGSTOP every ``flwr-clientapp`` the node starts: it took the message,
    its node stays online (heartbeats), and its reply never comes."""
    while not stop.is_set():
        for pid in processes_named(session_members(session), "flwr-clientapp"):
            if pid not in frozen:
                with contextlib.suppress(OSError):  # it may have ended
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
            # A stopped process takes no SIGTERM: left frozen, it would hold
            # node2's stop for its whole 10 s grace before the SIGKILL.
            kill_all(frozen)

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

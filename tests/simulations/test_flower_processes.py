from __future__ import annotations

import subprocess
import sys
import time

from fedge.simulations.flower_processes import (
    end_processes,
    free_port,
    process_tree,
    session_members,
    stop_process,
)

STUBBORN_CHILD = """
import subprocess, sys, time
# A grandchild in its own process group that ignores SIGTERM, as Ray's agents may.
subprocess.Popen([sys.executable, "-c",
    "import os, pathlib, signal, sys, time; os.setpgid(0, 0); "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "pathlib.Path(sys.argv[1]).touch(); time.sleep(120)", sys.argv[1]])
time.sleep(120)
"""


def test_stop_process_ends_the_whole_session_even_stubborn_members(tmp_path) -> None:
    ready = tmp_path / "ignoring-sigterm"
    process = subprocess.Popen(
        [sys.executable, "-c", STUBBORN_CHILD, str(ready)], start_new_session=True
    )
    deadline = time.monotonic() + 10
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(session_members(process.pid)) == 2

    stop_process(process, timeout_s=2)

    assert process.poll() is not None
    assert session_members(process.pid) == []


def test_free_port_is_bindable_on_loopback() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


DETACHED_CHILD = """
import subprocess, sys, time
# A child in a session of its own, as a SuperLink starts its SuperExec; it
# ignores SIGTERM.
subprocess.Popen([sys.executable, "-c",
    "import pathlib, signal, sys, time; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "pathlib.Path(sys.argv[1]).touch(); time.sleep(120)", sys.argv[1]],
    start_new_session=True)
time.sleep(120)
"""


def test_the_process_tree_reaches_children_in_sessions_of_their_own(tmp_path):
    # Prepare: a leader whose child left its session
    ready = tmp_path / "detached"
    leader = subprocess.Popen(
        [sys.executable, "-c", DETACHED_CHILD, str(ready)], start_new_session=True
    )
    deadline = time.monotonic() + 10
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    in_session = session_members(leader.pid)
    # Execute
    tree = process_tree([leader.pid])
    end_processes(tree, grace_s=1.0)
    leader.wait(timeout=5)
    # Assert: the session held the leader alone, the tree both; both are gone
    assert in_session == [leader.pid]
    assert len(tree) == 2 and leader.pid in tree
    assert process_tree(tree) == []

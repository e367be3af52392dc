from __future__ import annotations

import subprocess
import sys
import time

from simulations.flower_processes import (
    format_node_config,
    free_port,
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


def test_node_config_is_formatted_as_flower_expects() -> None:
    text = format_node_config({"data-path": "/data/a b.csv", "partition-id": 0})
    assert text == 'data-path="/data/a b.csv" partition-id=0'

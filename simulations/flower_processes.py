"""Start and stop Flower's own processes on this machine, on free loopback ports.

``fedge simulate`` uses a private SuperLink in simulation mode; the end-to-end
tests use a SuperLink with real SuperNodes. Each gets its own ``FLWR_HOME`` (so
nothing touches the user's ``~/.flwr``) and is stopped on exit, even on error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

logger = logging.getLogger(__name__)

CONNECTION = "fedge"  # the connection name written to the private config.toml
STARTUP_TIMEOUT_S = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower's CLIs: private home, no telemetry, no installs.

    Runtime dependency installation is off because it resolves ``torch`` to a
    multi-GB CUDA build; the app's dependencies are already in this environment.
    """
    env = os.environ.copy()
    bin_dir = str(Path(sys.executable).parent)
    env.update(
        {
            "FLWR_HOME": str(flwr_home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PATH": bin_dir + os.pathsep + env.get("PATH", ""),
            "RAY_DEDUP_LOGS": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@dataclass
class SuperLink:
    """A running ``flower-superlink`` and how to reach it."""

    process: subprocess.Popen[bytes]
    address: str
    flwr_home: Path
    log_path: Path

    @property
    def env(self) -> dict[str, str]:
        """Environment that points Flower's CLIs at this SuperLink."""
        return flower_env(self.flwr_home)


@contextlib.contextmanager
def running_superlink(workdir: Path, *, simulation: bool) -> Iterator[SuperLink]:
    """Start a SuperLink on free 127.0.0.1 ports; stop it when the block ends.

    Writes ``workdir/flwr-home/config.toml`` with a connection named
    :data:`CONNECTION` so ``flwr run <app> fedge`` reaches it.
    """
    flwr_home = workdir / "flwr-home"
    flwr_home.mkdir(parents=True, exist_ok=True)
    port, control_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    config = {
        "superlink": {
            "default": CONNECTION,
            CONNECTION: {"address": address, "insecure": True},
        }
    }
    (flwr_home / "config.toml").write_text(tomli_w.dumps(config))
    log_path = workdir / "superlink.log"
    command = [
        "flower-superlink",
        "--insecure",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--control-api-address",
        f"127.0.0.1:{control_port}",
        "--disable-runtime-dependency-installation",
    ]
    if simulation:
        command.append("--simulation")
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            env=flower_env(flwr_home),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    link = SuperLink(
        process=process, address=address, flwr_home=flwr_home, log_path=log_path
    )
    try:
        _wait_healthy(link)
        yield link
    finally:
        stop_process(process)


def _wait_healthy(link: SuperLink) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if link.process.poll() is not None:
            raise RuntimeError(
                f"flower-superlink exited with code {link.process.returncode} at start; "
                f"see {link.log_path}"
            )
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://{link.address}/health", timeout=2) as r,
        ):
            if r.status == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(
        f"flower-superlink not healthy after {STARTUP_TIMEOUT_S:.0f} s; see {link.log_path}"
    )


@contextlib.contextmanager
def running_supernode(
    link: SuperLink, workdir: Path, *, node_config: Mapping[str, Any], name: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a ``flower-supernode`` connected to ``link``; stop it at block end."""
    log_path = workdir / f"{name}.log"
    command = [
        "flower-supernode",
        "--insecure",
        "--superlink",
        link.address,
        "--port",
        str(free_port()),
        "--node-config",
        format_node_config(node_config),
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            env=link.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop_process(process)


def format_node_config(node_config: Mapping[str, Any]) -> str:
    """``{"data-path": "/x.csv", "partition-id": 0}`` -> ``data-path="/x.csv" partition-id=0``."""
    return " ".join(
        f"{k}={tomli_w.dumps({'v': v}).split('=', 1)[1].strip()}"
        for k, v in node_config.items()
    )


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Terminate a process and everything in its session; kill what lingers.

    The process was started in a session of its own. Killing its process group is
    not enough: the simulation engine's Ray agents sit in other groups of the same
    session and would outlive it.
    """
    session = process.pid
    _signal_session(session, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _signal_session(session, signal.SIGKILL)
        process.wait(timeout=timeout_s)
    _wait_session_empty(session, timeout_s)
    _signal_session(session, signal.SIGKILL)
    _wait_session_empty(session, timeout_s)


def _wait_session_empty(session: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while session_members(session) and time.monotonic() < deadline:
        time.sleep(0.1)


def session_members(session: int) -> list[int]:
    """PIDs of the live processes in session ``session`` (Linux ``/proc``)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) < 4:  # the process vanished while being read
            continue
        # After the name: state, ppid, pgrp, session, ...; zombies are already gone.
        if fields[0] != "Z" and int(fields[3]) == session:
            members.append(int(entry.name))
    return members


def _signal_session(session: int, sig: signal.Signals) -> None:
    for pid in session_members(session):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def flwr_run_command(
    app_dir: Path,
    overrides_file: Path,
    *,
    federation_config: Mapping[str, Any] | None = None,
) -> list[str]:
    """The ``flwr run`` command line that submits ``app_dir`` and streams its logs."""
    command = [
        "flwr",
        "run",
        str(app_dir),
        CONNECTION,
        "--stream",
        "--run-config",
        str(overrides_file),
    ]
    if federation_config:
        command += ["--federation-config", format_node_config(federation_config)]
    return command


def write_run_config(path: Path, overrides: Mapping[str, Any]) -> Path:
    """Write run-config overrides as the TOML file ``flwr run --run-config`` reads."""
    path.write_text(tomli_w.dumps(dict(overrides)))
    return path

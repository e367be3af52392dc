"""Start and stop Flower's own processes on this machine, on free loopback ports.

``fedge simulate`` uses a private SuperLink in simulation mode; the end-to-end
tests and benchmarks start deployment SuperLinks (TLS and SuperNode
authentication flags of their own) through :func:`serving_superlink`. Each gets
its own ``FLWR_HOME`` (so nothing touches the user's ``~/.flwr``) and is stopped
on exit, even on error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from fedge.shared.flower_config_text import format_node_config

logger = logging.getLogger(__name__)

CONNECTION = "fedge"  # the connection name written to the private config.toml
STARTUP_TIMEOUT_S = 60.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
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
    """A running ``flower-superlink`` and how to reach it.

    ``ca_cert`` is set when the SuperLink serves TLS: clients verify it with
    this CA certificate.
    """

    process: subprocess.Popen[bytes]
    address: str
    flwr_home: Path
    log_path: Path
    ca_cert: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        """Environment that points Flower's CLIs at this SuperLink."""
        return flower_env(self.flwr_home)


@contextlib.contextmanager
def running_superlink(
    workdir: Path, *, simulation: bool, env: Mapping[str, str] | None = None
) -> Iterator[SuperLink]:
    """Start an insecure SuperLink on free 127.0.0.1 ports; stop it at block end.

    Writes ``workdir/flwr-home/config.toml`` with a connection named
    :data:`CONNECTION` so ``flwr run <app> fedge`` reaches it.

    Parameters
    ----------
    workdir : Path
        Holds the private ``FLWR_HOME`` and ``superlink.log``.
    simulation : bool
        Run the simulation runtime instead of waiting for SuperNodes.
    env : mapping or None, default None
        Extra environment (e.g. ``RAY_ADDRESS`` for the simulation engine).
    """
    port = free_port()
    with serving_superlink(
        superlink_command(port, simulation=simulation),
        workdir=workdir,
        port=port,
        env=env,
    ) as link:
        yield link


@contextlib.contextmanager
def serving_superlink(
    command: Sequence[str],
    *,
    workdir: Path,
    port: int,
    ca_cert: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[SuperLink]:
    """Run a SuperLink ``command`` listening on 127.0.0.1:``port`` until block end.

    Parameters
    ----------
    command : sequence of str
        The command line (``flower-superlink ...`` or an operator's launcher).
    workdir : Path
        Holds the private ``FLWR_HOME`` and ``superlink.log``.
    port : int
        The port the command serves; the connection in ``config.toml`` uses it.
    ca_cert : Path or None, default None
        The CA that signed the SuperLink's certificate when it serves TLS; the
        CLI connection and the health check verify against it.
    env : mapping or None, default None
        Extra environment for the command (a launcher's settings).
    cwd : Path or None, default None
        Working directory of the command.

    Raises
    ------
    RuntimeError
        If the SuperLink exits at start or is not healthy in time.
    """
    flwr_home = workdir / "flwr-home"
    flwr_home.mkdir(parents=True, exist_ok=True)
    address = f"127.0.0.1:{port}"
    connection: dict[str, Any] = {"address": address}
    if ca_cert is None:
        connection["insecure"] = True
    else:
        # The flwr CLI refuses a relative root-certificates path.
        connection["root-certificates"] = str(ca_cert.resolve())
    config = {"superlink": {"default": CONNECTION, CONNECTION: connection}}
    (flwr_home / "config.toml").write_text(tomli_w.dumps(config))
    log_path = workdir / "superlink.log"
    process = start_logged(
        list(command),
        env={**flower_env(flwr_home), **(env or {})},
        log_path=log_path,
        cwd=cwd,
    )
    link = SuperLink(
        process=process,
        address=address,
        flwr_home=flwr_home,
        log_path=log_path,
        ca_cert=ca_cert,
    )
    try:
        _wait_healthy(link)
        yield link
    finally:
        # The SuperExec, a simulation process and its Ray cluster run in
        # sessions of their own below the SuperLink: take them while it lives.
        tree = process_tree([process.pid])
        stop_process(process)
        end_processes(tree)


def superlink_command(
    port: int, *, simulation: bool, options: Sequence[str] = ("--insecure",)
) -> list[str]:
    """``flower-superlink`` on 127.0.0.1:``port``, without runtime installs.

    ``options`` are the security flags (``--insecure`` by default, or TLS and
    SuperNode authentication flags) and any others, such as ``--database``.
    """
    command = [
        "flower-superlink",
        *options,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        # The legacy gRPC Control API (off unless FLWR_INTERNAL_GRPC_CONTROL_API=1)
        # would bind 0.0.0.0:9093; a free port keeps parallel SuperLinks apart.
        "--control-api-address",
        f"127.0.0.1:{free_port()}",
        "--disable-runtime-dependency-installation",
    ]
    if simulation:
        command.append("--simulation")
    return command


def start_logged(
    command: list[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``command`` in a session of its own, output appended to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command,
            env=dict(env),
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_healthy(link: SuperLink) -> None:
    if link.ca_cert is None:
        url, context = f"http://{link.address}/health", None
    else:
        # Verifies the certificate chain and that it names 127.0.0.1, as nodes do.
        url = f"https://{link.address}/health"
        context = ssl.create_default_context(cafile=str(link.ca_cert))
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if link.process.poll() is not None:
            raise RuntimeError(
                f"flower-superlink exited with code {link.process.returncode} at start; "
                f"see {link.log_path}"
            )
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=2, context=context) as r,
        ):
            if r.status == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(
        f"flower-superlink not healthy after {STARTUP_TIMEOUT_S:.0f} s; see {link.log_path}"
    )


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Terminate a process and everything in its session; kill what lingers.

    The process was started in a session of its own. Killing its process group is
    not enough: the simulation engine's Ray agents sit in other groups of the same
    session and would outlive it.
    """
    session = process.pid
    signal_session(session, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        signal_session(session, signal.SIGKILL)
        process.wait(timeout=timeout_s)
    _wait_session_empty(session, timeout_s)
    signal_session(session, signal.SIGKILL)
    _wait_session_empty(session, timeout_s)


def _wait_session_empty(session: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while session_members(session) and time.monotonic() < deadline:
        time.sleep(0.1)


def session_members(session: int) -> list[int]:
    """PIDs of the live processes in session ``session`` (Linux ``/proc``)."""
    return [pid for pid, _, member_of in _live_processes() if member_of == session]


def process_tree(leaders: Sequence[int]) -> list[int]:
    """PIDs of the live processes in the sessions of ``leaders`` or below them.

    A SuperLink starts its SuperExec in a session of its own, and the
    SuperExec the simulation process: their sessions are not the SuperLink's,
    but they are its descendants.
    """
    processes = _live_processes()
    tree = {pid for pid, _, session in processes if session in leaders}
    tree |= {pid for pid in leaders if pid in {p for p, _, _ in processes}}
    grew = True
    while grew:
        below = {pid for pid, parent, _ in processes if parent in tree} - tree
        tree |= below
        grew = bool(below)
    return sorted(tree)


def end_processes(pids: Sequence[int], grace_s: float = 5.0) -> None:
    """SIGTERM ``pids``, wait up to ``grace_s`` for them to end, SIGKILL the rest."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = {pid for pid, _, _ in _live_processes()} & set(pids)
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive &= {pid for pid, _, _ in _live_processes()}


def _live_processes() -> list[tuple[int, int, int]]:
    """``(pid, parent pid, session)`` of every live process (Linux ``/proc``)."""
    processes = []
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
        if fields[0] != "Z":
            processes.append((int(entry.name), int(fields[1]), int(fields[3])))
    return processes


def signal_session(session: int, sig: signal.Signals) -> None:
    """Send ``sig`` to every live process in session ``session``."""
    for pid in session_members(session):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def flwr_run_command(
    app_dir: Path,
    overrides_file: Path,
    *,
    federation_config: Mapping[str, Any] | None = None,
) -> list[str]:
    """Return the ``flwr run`` command line that submits ``app_dir`` and streams its logs."""
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

"""Start and stop Flower's own processes on this machine, on free loopback ports.

``fedge simulate`` uses a private SuperLink in simulation mode; the end-to-end
tests use a SuperLink with real SuperNodes, insecure or with TLS and SuperNode
authentication, started directly or through the operator's launchers in
``deploy/``. Each gets its own ``FLWR_HOME`` (so nothing touches the user's
``~/.flwr``) and is stopped on exit, even on error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import ssl
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


@dataclass(frozen=True)
class TlsFiles:
    """The SuperLink's TLS files, as ``deploy/make-certs.sh`` names them."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def from_dir(cls, cert_dir: Path) -> TlsFiles:
        """``ca.crt``, ``server.pem`` and ``server.key`` in ``cert_dir``."""
        cert_dir = Path(cert_dir).resolve()
        return cls(
            ca_cert=cert_dir / "ca.crt",
            server_cert=cert_dir / "server.pem",
            server_key=cert_dir / "server.key",
        )


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
    workdir: Path,
    *,
    simulation: bool,
    tls: TlsFiles | None = None,
    supernode_auth: bool = False,
    launcher: Path | None = None,
) -> Iterator[SuperLink]:
    """Start a SuperLink on free 127.0.0.1 ports; stop it when the block ends.

    Writes ``workdir/flwr-home/config.toml`` with a connection named
    :data:`CONNECTION` so ``flwr run <app> fedge`` reaches it.

    Parameters
    ----------
    workdir : Path
        Holds the private ``FLWR_HOME``, ``superlink.log`` and (with a launcher)
        the SuperLink's database.
    simulation : bool
        Run the simulation runtime instead of waiting for SuperNodes.
    tls : TlsFiles or None, default None
        Serve TLS with these files; None serves plain HTTP (``--insecure``).
    supernode_auth : bool, default False
        Admit only SuperNodes whose public key was registered
        (:func:`register_supernode`).
    launcher : Path or None, default None
        Start the SuperLink through this operator launcher
        (``deploy/superlink.sh``) instead of calling ``flower-superlink``
        directly. The launcher always uses TLS and SuperNode authentication.

    Raises
    ------
    ValueError
        If a launcher is given without ``tls`` and ``supernode_auth``, or
        with ``simulation``.
    """
    if launcher is not None and (tls is None or not supernode_auth or simulation):
        raise ValueError(
            f"The launcher {launcher} always starts a deployment SuperLink with TLS "
            "and SuperNode authentication; got "
            f"tls={tls is not None}, supernode_auth={supernode_auth}, "
            f"simulation={simulation}. Pass tls=TlsFiles(...), supernode_auth=True "
            "and simulation=False, or no launcher."
        )
    flwr_home = workdir / "flwr-home"
    flwr_home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    address = f"127.0.0.1:{port}"
    connection: dict[str, Any] = {"address": address}
    if tls is None:
        connection["insecure"] = True
    else:
        # The flwr CLI refuses a relative root-certificates path.
        connection["root-certificates"] = str(tls.ca_cert.resolve())
    config = {"superlink": {"default": CONNECTION, CONNECTION: connection}}
    (flwr_home / "config.toml").write_text(tomli_w.dumps(config))
    env = flower_env(flwr_home)
    if launcher is not None and tls is not None:
        command = [str(launcher)]
        # Absolute paths: the launcher runs in workdir.
        env.update(
            {
                "FEDGE_CA_CERT": str(tls.ca_cert.resolve()),
                "FEDGE_SERVER_CERT": str(tls.server_cert.resolve()),
                "FEDGE_SERVER_KEY": str(tls.server_key.resolve()),
                "FEDGE_HOST": "127.0.0.1",
                "FEDGE_PORT": str(port),
                "FEDGE_DATABASE": str(workdir / "superlink-state.db"),
            }
        )
    else:
        command = _superlink_command(port, tls, supernode_auth=supernode_auth)
        if simulation:
            command.append("--simulation")
    log_path = workdir / "superlink.log"
    # A launcher's relative defaults land in workdir.
    cwd = workdir if launcher is not None else None
    process = _start(command, env=env, log_path=log_path, cwd=cwd)
    link = SuperLink(
        process=process,
        address=address,
        flwr_home=flwr_home,
        log_path=log_path,
        ca_cert=None if tls is None else tls.ca_cert,
    )
    try:
        _wait_healthy(link)
        yield link
    finally:
        stop_process(process)


def _superlink_command(
    port: int, tls: TlsFiles | None, *, supernode_auth: bool
) -> list[str]:
    command = ["flower-superlink"]
    if tls is None:
        command.append("--insecure")
    else:
        command += [
            "--ssl-ca-certfile",
            str(tls.ca_cert),
            "--ssl-certfile",
            str(tls.server_cert),
            "--ssl-keyfile",
            str(tls.server_key),
        ]
    if supernode_auth:
        command.append("--enable-supernode-auth")
    command += [
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
    return command


def _start(
    command: list[str], *, env: Mapping[str, str], log_path: Path, cwd: Path | None
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


@contextlib.contextmanager
def running_supernode(
    link: SuperLink,
    workdir: Path,
    *,
    node_config: Mapping[str, Any],
    name: str,
    auth_key: Path | None = None,
    launcher: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a ``flower-supernode`` connected to ``link``; stop it at block end.

    Its output goes to ``workdir/<name>.log``. The node uses TLS when ``link``
    does (verifying it with ``link.ca_cert``).

    Parameters
    ----------
    link : SuperLink
        The SuperLink to join.
    workdir : Path
        Where the log goes (and, with a launcher, the working directory).
    node_config : mapping
        The node config, e.g. ``{"partition-id": 0, "num-partitions": 2}``.
    name : str
        Names the log file.
    auth_key : Path or None, default None
        The node's private key (``deploy/make-node-key.sh``) for SuperNode
        authentication; None connects without one.
    launcher : Path or None, default None
        Start the node through this operator launcher (``deploy/supernode.sh``)
        instead of calling ``flower-supernode`` directly. Without a
        ``state-dir`` in ``node_config`` the node keeps its ledgers in
        ``workdir/<name>-state``.

    Raises
    ------
    ValueError
        If a launcher is given for an insecure ``link`` or without ``auth_key``.
    """
    port = free_port()
    env = link.env
    if launcher is not None:
        if link.ca_cert is None or auth_key is None:
            raise ValueError(
                f"The launcher {launcher} always connects with TLS and a node key; "
                f"got a SuperLink with tls={link.ca_cert is not None} and "
                f"auth_key={auth_key}. Use a TLS SuperLink and pass auth_key, "
                "or no launcher."
            )
        rest = {
            k: v for k, v in node_config.items() if k not in ("data-path", "state-dir")
        }
        state_dir = Path(node_config.get("state-dir", workdir / f"{name}-state"))
        data_path = node_config.get("data-path")
        # Absolute paths: the launcher runs in workdir.
        env.update(
            {
                "FEDGE_SUPERLINK": link.address,
                "FEDGE_NODE_KEY": str(auth_key.resolve()),
                "FEDGE_CA_CERT": str(link.ca_cert.resolve()),
                "FEDGE_STATE_DIR": str(state_dir.resolve()),
                "FEDGE_DATA_PATH": str(Path(data_path).resolve()) if data_path else "",
                "FEDGE_NODE_CONFIG": format_node_config(rest),
                "FEDGE_NODE_PORT": str(port),
            }
        )
        command = [str(launcher)]
    else:
        command = ["flower-supernode"]
        if link.ca_cert is None:
            command.append("--insecure")
        else:
            command += ["--root-certificates", str(link.ca_cert)]
        if auth_key is not None:
            command += ["--auth-supernode-private-key", str(auth_key)]
        command += [
            "--superlink",
            link.address,
            "--port",
            str(port),
            "--node-config",
            format_node_config(node_config),
        ]
    process = _start(
        command,
        env=env,
        log_path=workdir / f"{name}.log",
        cwd=workdir if launcher is not None else None,
    )
    try:
        yield process
    finally:
        stop_process(process)


def register_supernode(link: SuperLink, public_key: Path) -> int:
    """Register a SuperNode's public key with ``flwr supernode register``.

    Returns
    -------
    int
        The node ID the SuperLink gave the key; the node gets it on connecting.

    Raises
    ------
    RuntimeError
        If the CLI reports a failure (e.g. the key is already registered).
    """
    command = ["flwr", "supernode", "register", str(public_key), CONNECTION]
    done = subprocess.run(
        [*command, "--format", "json"],
        env=link.env,
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT_S,
    )
    # With --format json the CLI exits 0 even on failure; the JSON says.
    try:
        reply = json.loads(done.stdout)
    except json.JSONDecodeError:
        reply = {}
    if done.returncode != 0 or not reply.get("success"):
        detail = reply.get("error-message") or (done.stdout + done.stderr).strip()
        raise RuntimeError(
            f"flwr supernode register {public_key} failed (exit code "
            f"{done.returncode}): {detail}"
        )
    return int(reply["node-id"])


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

"""A real federation on 127.0.0.1 for the end-to-end tests: SuperLink, nodes, runs.

Built from the production pieces: :func:`simulations.flower_processes.serving_superlink`
for the SuperLink, ``fedge node start`` (or the operator's ``deploy/`` launchers)
for secure nodes, ``deploy/make-*.sh`` for certificates and keys. Everything
started here is stopped when its ``with`` block ends, even on failure.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulations.flower_processes import (
    CONNECTION,
    STARTUP_TIMEOUT_S,
    SuperLink,
    flwr_run_command,
    format_node_config,
    free_port,
    serving_superlink,
    start_logged,
    stop_process,
    superlink_command,
    write_run_config,
)

APP_DIR = Path(__file__).resolve().parents[2]
DEPLOY = APP_DIR / "deploy"
FEDGE = [sys.executable, "-m", "cli.app"]  # `fedge`, from this checkout


# ------------------------------------------------------------------ files
def deploy_script(name: str, *args: Path | str) -> str:
    """Run ``deploy/NAME args``; return its output (fails the test on error)."""
    done = subprocess.run(
        [str(DEPLOY / name), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@dataclass(frozen=True)
class TlsFiles:
    """The SuperLink's TLS files, as ``deploy/make-certs.sh`` names them."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def make(cls, cert_dir: Path) -> TlsFiles:
        """Certificates for 127.0.0.1 in ``cert_dir``, by the operator's script."""
        deploy_script("make-certs.sh", cert_dir, "127.0.0.1")
        cert_dir = cert_dir.resolve()
        return cls(
            cert_dir / "ca.crt", cert_dir / "server.pem", cert_dir / "server.key"
        )

    def superlink_options(self) -> list[str]:
        """``flower-superlink`` flags: TLS with these files, SuperNode auth on."""
        return [
            "--ssl-ca-certfile",
            str(self.ca_cert),
            "--ssl-certfile",
            str(self.server_cert),
            "--ssl-keyfile",
            str(self.server_key),
            "--enable-supernode-auth",
        ]


def make_node_key(key_dir: Path, name: str) -> Path:
    """A node's key pair by ``deploy/make-node-key.sh``; returns the private key."""
    deploy_script("make-node-key.sh", key_dir, name)
    return (key_dir / name).resolve()


# ------------------------------------------------------------------ SuperLink
@contextlib.contextmanager
def running_superlink(
    workdir: Path,
    *,
    tls: TlsFiles | None = None,
    database: Path | None = None,
    port: int | None = None,
    launcher: bool = False,
) -> Iterator[SuperLink]:
    """A deployment SuperLink on 127.0.0.1: insecure, or TLS + SuperNode auth.

    ``launcher`` starts it through ``deploy/superlink.sh`` (needs ``tls``);
    ``database`` keeps its state for a restart on the same ``port``.
    """
    port = port or free_port()
    env: dict[str, str] = {}
    if launcher:
        assert tls is not None, "deploy/superlink.sh always serves TLS"
        command = [str(DEPLOY / "superlink.sh")]
        env = {
            "FEDGE_CA_CERT": str(tls.ca_cert),
            "FEDGE_SERVER_CERT": str(tls.server_cert),
            "FEDGE_SERVER_KEY": str(tls.server_key),
            "FEDGE_HOST": "127.0.0.1",
            "FEDGE_PORT": str(port),
            "FEDGE_DATABASE": str(database or workdir / "superlink-state.db"),
        }
    else:
        options = ["--insecure"] if tls is None else tls.superlink_options()
        if database is not None:
            options += ["--database", str(database)]
        command = superlink_command(port, simulation=False, options=options)
    with serving_superlink(
        command,
        workdir=workdir,
        port=port,
        ca_cert=None if tls is None else tls.ca_cert,
        env=env,
        cwd=workdir,
    ) as link:
        yield link


def register_supernode(link: SuperLink, public_key: Path) -> int:
    """Register a node's public key with ``flwr supernode register``; its node ID."""
    done = subprocess.run(
        [
            "flwr",
            "supernode",
            "register",
            str(public_key),
            CONNECTION,
            "--format",
            "json",
        ],
        env=link.env,
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT_S,
    )
    # With --format json the CLI exits 0 even on failure; the JSON says.
    reply = json.loads(done.stdout or "{}")
    assert reply.get("success"), done.stdout + done.stderr
    return int(reply["node-id"])


def supernode_states(link: SuperLink) -> dict[int, str]:
    """Node ID -> status (``registered``, ``online``, ``offline``) per the SuperLink."""
    done = subprocess.run(
        ["flwr", "supernode", "list", CONNECTION, "--format", "json"],
        env=link.env,
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT_S,
    )
    return {int(n["node-id"]): n["status"] for n in json.loads(done.stdout)["nodes"]}


# ------------------------------------------------------------------ nodes
@dataclass
class Node:
    """A secure node's identity and files; started and stopped by the test."""

    name: str
    key: Path
    state_dir: Path
    node_config: Mapping[str, Any] = field(default_factory=dict)
    data_path: Path | None = None
    node_id: int | None = None


@contextlib.contextmanager
def running_node(
    link: SuperLink,
    workdir: Path,
    node: Node,
    *,
    ca_cert: Path | None = None,
    launcher: bool = False,
) -> Iterator[subprocess.Popen[bytes]]:
    """``fedge node start`` for ``node`` (or ``deploy/supernode.sh``), log in workdir.

    ``ca_cert`` overrides the CA the node trusts (default: the SuperLink's).
    """
    assert link.ca_cert is not None, "fedge node start always uses TLS"
    settings = {
        "FEDGE_SUPERLINK": link.address,
        "FEDGE_NODE_KEY": str(node.key),
        "FEDGE_CA_CERT": str((ca_cert or link.ca_cert).resolve()),
        "FEDGE_STATE_DIR": str(node.state_dir),
        "FEDGE_DATA_PATH": str(node.data_path or ""),
        "FEDGE_NODE_CONFIG": format_node_config(node.node_config),
        "FEDGE_NODE_PORT": str(free_port()),
    }
    command = [str(DEPLOY / "supernode.sh")] if launcher else [*FEDGE, "node", "start"]
    process = start_logged(
        command,
        env={**link.env, **settings},
        log_path=workdir / f"{node.name}.log",
        cwd=APP_DIR,
    )
    try:
        yield process
    finally:
        stop_process(process)


@contextlib.contextmanager
def running_keyless_node(
    link: SuperLink,
    workdir: Path,
    *,
    name: str,
    node_config: Mapping[str, Any],
    tls: bool = False,
) -> Iterator[subprocess.Popen[bytes]]:
    """A plain ``flower-supernode`` without a key: insecure, or TLS with ``tls``."""
    security = ["--insecure"]
    if tls:
        assert link.ca_cert is not None
        security = ["--root-certificates", str(link.ca_cert)]
    command = [
        "flower-supernode",
        *security,
        "--superlink",
        link.address,
        "--port",
        str(free_port()),
        "--node-config",
        format_node_config(node_config),
    ]
    process = start_logged(command, env=link.env, log_path=workdir / f"{name}.log")
    try:
        yield process
    finally:
        stop_process(process)


# ------------------------------------------------------------------ runs
def submit_run(
    link: SuperLink, workdir: Path, overrides: Mapping[str, Any], *, timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """``flwr run <app> --stream`` with ``overrides``; waits for the run to end."""
    return subprocess.run(
        flwr_run_command(APP_DIR, write_run_config(workdir / "run.toml", overrides)),
        env=link.env,
        cwd=APP_DIR,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def start_run(
    link: SuperLink, workdir: Path, overrides: Mapping[str, Any], *, name: str = "run"
) -> subprocess.Popen[bytes]:
    """``flwr run <app> --stream`` in the background, output in ``workdir/NAME.log``."""
    command = flwr_run_command(
        APP_DIR, write_run_config(workdir / f"{name}.toml", overrides)
    )
    return start_logged(
        command, env=link.env, log_path=workdir / f"{name}.log", cwd=APP_DIR
    )


def read_json(path: Path) -> Any:
    """A JSON file's content."""
    return json.loads(path.read_text())

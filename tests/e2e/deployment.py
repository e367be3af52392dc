"""A real federation on 127.0.0.1 for the end-to-end tests: SuperLink, nodes, runs.

Built from the production pieces: :func:`fedge.simulations.flower_processes.serving_superlink`
for the SuperLink, ``fedge node start`` (or the operator's ``deploy/`` launchers)
for secure nodes, ``deploy/make-*.sh`` for certificates and keys. Everything
started here is stopped when its ``with`` block ends, even on failure.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedge.shared.flower_config_text import format_node_config
from fedge.simulations.fault_app import write_app_copy
from fedge.simulations.flower_processes import (
    CONNECTION,
    STARTUP_TIMEOUT_S,
    SuperLink,
    flwr_run_command,
    free_port,
    serving_superlink,
    session_members,
    start_logged,
    stop_process,
    superlink_command,
    write_run_config,
)

APP_DIR = Path(__file__).resolve().parents[2]
DEPLOY = APP_DIR / "deploy"
FEDGE = [sys.executable, "-m", "fedge.cli.app"]  # `fedge`, from this checkout


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
def running_flower_node(
    link: SuperLink,
    workdir: Path,
    *,
    name: str,
    node_config: Mapping[str, Any],
    tls: bool = False,
    key: Path | None = None,
    options: Sequence[str] = (),
) -> Iterator[subprocess.Popen[bytes]]:
    """``flower-supernode`` called directly: insecure unless ``tls``, keyless
    unless ``key``; what `fedge node start` would never build. ``options`` are
    further ``flower-supernode`` flags (e.g. ``--max-retries``)."""
    security = ["--insecure"]
    if tls:
        assert link.ca_cert is not None
        security = ["--root-certificates", str(link.ca_cert)]
    if key is not None:
        security += ["--auth-supernode-private-key", str(key)]
    command = [
        "flower-supernode",
        *security,
        "--superlink",
        link.address,
        "--port",
        str(free_port()),
        "--node-config",
        format_node_config(node_config),
        *options,
    ]
    process = start_logged(command, env=link.env, log_path=workdir / f"{name}.log")
    try:
        yield process
    finally:
        stop_process(process)


# ------------------------------------------------------------------ runs
def app_copy(workdir: Path) -> Path:
    """The app the runs submit: a copy of its packages and ``pyproject.toml``.

    ``flwr run <folder>`` walks every file under the folder before it filters
    them, a checkout's ``.venv`` and ``.git`` included: about 3.4 s a
    submission, which the copy (the one ``fedge simulate`` submits) spares.
    Written once per ``workdir``. The checkout itself, as users submit it
    (``flwr run .``), is submitted by the resume in
    ``test_deployment_faults.py::
    test_a_round_the_coordinator_lost_is_resent_not_retrained_after_a_restart``.
    """
    app = workdir / "app"
    if not (app / "pyproject.toml").is_file():  # written last: the copy is whole
        write_app_copy(APP_DIR, app)
    return app


def submit_run(
    link: SuperLink, workdir: Path, overrides: Mapping[str, Any], *, timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """``flwr run <app> --stream`` with ``overrides``; waits for the run to end.

    Submits :func:`app_copy`, not the checkout.
    """
    return subprocess.run(
        flwr_run_command(
            app_copy(workdir), write_run_config(workdir / "run.toml", overrides)
        ),
        env=link.env,
        cwd=APP_DIR,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def start_run(
    link: SuperLink, workdir: Path, overrides: Mapping[str, Any], *, name: str = "run"
) -> subprocess.Popen[bytes]:
    """``flwr run <app> --stream`` in the background, output in ``workdir/NAME.log``.

    Submits :func:`app_copy`, not the checkout.
    """
    command = flwr_run_command(
        app_copy(workdir), write_run_config(workdir / f"{name}.toml", overrides)
    )
    return start_logged(
        command, env=link.env, log_path=workdir / f"{name}.log", cwd=APP_DIR
    )


def read_json(path: Path) -> Any:
    """A JSON file's content."""
    return json.loads(path.read_text())


def produce_once(
    base_temp: Path, name: str, produce: Callable[[Path], dict[str, Any]]
) -> dict[str, Any]:
    """``produce(workdir)`` once per pytest session, for every test that asks.

    Several tests can then check one deployment run, even when pytest-xdist
    gives them to different workers: ``base_temp`` is the session's temporary
    folder (``tmp_path_factory.getbasetemp()``), whose parent the workers
    share. The first to ask runs ``produce`` in ``NAME/`` and keeps its JSON
    result; the others wait on a file lock and read it. A ``produce`` that
    raised is tried again by the next test.
    """
    shared = base_temp.parent if "PYTEST_XDIST_WORKER" in os.environ else base_temp
    workdir, result = shared / name, shared / f"{name}.json"
    with (shared / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not result.exists():
            shutil.rmtree(workdir, ignore_errors=True)  # a failed attempt's
            workdir.mkdir()
            result.write_text(json.dumps(produce(workdir)))
        produced: dict[str, Any] = json.loads(result.read_text())
        return produced


# ------------------------------------------------------------------ federation
DP_ROUND_CONFIG = {
    # DP-SGD on every node, calibrated to ε = 8 over the run; small, quick rounds.
    "dp-mode": "sample",
    "noise-multiplier": 0.0,
    "target-epsilon": 8.0,
    "local-epochs": 1,
    "batch-size": 32,
}


@dataclass
class Federation:
    """A TLS SuperLink with SuperNode authentication and its registered nodes."""

    workdir: Path
    tls: TlsFiles
    link: SuperLink
    nodes: list[Node]
    database: Path
    port: int
    _stack: contextlib.ExitStack
    _running: dict[str, contextlib.ExitStack] = field(default_factory=dict)

    def start(self, node: Node, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``node`` with ``fedge node start`` (kwargs: :func:`running_node`)."""
        stack = contextlib.ExitStack()
        process = stack.enter_context(
            running_node(self.link, self.workdir, node, **kwargs)
        )
        self._running[node.name] = stack
        return process

    def wait_online(self, *, timeout_s: float = 120) -> None:
        """Wait until every node is ``online`` at the SuperLink (started first).

        A run submitted earlier could begin its first round before a slow node
        connects, and then miss it.
        """
        ids = {node.node_id for node in self.nodes}
        wait_for(
            lambda: (
                {i for i, s in supernode_states(self.link).items() if s == "online"}
                >= ids
            ),
            timeout_s=timeout_s,
            what=f"{len(ids)} nodes online",
        )

    def stop(self, node: Node) -> None:
        """Stop ``node`` and everything it started (its ClientApp processes too)."""
        self._running.pop(node.name).close()

    def close(self) -> None:
        """Stop every node still running."""
        for name in list(self._running):
            self._running.pop(name).close()

    def kill_superlink(self) -> None:
        """SIGKILL the SuperLink and its ServerApp: a coordinator crash."""
        # Flower starts the ServerApp's SuperExec (and so the ServerApp) in a
        # session of its own: its process tree finds them.
        pid = self.link.process.pid
        kill_all({*session_members(pid), *process_tree(pid)})
        self.link.process.wait(timeout=30)

    def restart_superlink(self) -> SuperLink:
        """A new SuperLink on the same port with the same database."""
        self.link = self._stack.enter_context(
            running_superlink(
                self.workdir, tls=self.tls, database=self.database, port=self.port
            )
        )
        return self.link

    def run_dir(self, overrides: Mapping[str, Any]) -> Path:
        """The run folder ``overrides`` name."""
        return Path(overrides["output-dir"]) / str(overrides["run-name"])


@contextlib.contextmanager
def secure_federation(
    workdir: Path, num_nodes: int, *, node_config: Mapping[str, Any] | None = None
) -> Iterator[Federation]:
    """A TLS + auth SuperLink (with a database) and ``num_nodes`` registered nodes.

    Nodes are not started: call :meth:`Federation.start`. Node ``i`` holds
    partition ``i`` of ``num_nodes`` of the built-in data unless ``node_config``
    is given. Everything is stopped when the block ends.
    """
    tls = TlsFiles.make(workdir / "certs")
    nodes = [
        Node(
            name=f"node{i}",
            key=make_node_key(workdir / "keys", f"node{i}"),
            state_dir=workdir / f"node{i}-state",
            node_config=dict(
                node_config or {"partition-id": i, "num-partitions": num_nodes}
            ),
        )
        for i in range(num_nodes)
    ]
    database, port = workdir / "superlink-state.db", free_port()
    with contextlib.ExitStack() as stack:
        link = stack.enter_context(
            running_superlink(workdir, tls=tls, database=database, port=port)
        )
        # In parallel: each `flwr` call pays its own start-up.
        with ThreadPoolExecutor(max_workers=num_nodes) as pool:
            ids = pool.map(
                lambda n: register_supernode(
                    link, n.key.with_name(n.key.name + ".pub")
                ),
                nodes,
            )
            for node, node_id in zip(nodes, ids, strict=True):
                node.node_id = node_id
        federation = Federation(workdir, tls, link, nodes, database, port, stack)
        stack.callback(federation.close)
        yield federation


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (Linux ``/proc``), whatever their session."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        # After the name: state, ppid, ...; the process may end while being read.
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[-1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    tree, pending = [], [pid]
    while pending:
        parent = pending.pop()
        tree.append(parent)
        pending.extend(children.get(parent, []))
    return tree


def processes_named(pids: Iterable[int], command: str) -> list[int]:
    """Those of ``pids`` whose command line names ``command`` (``flwr-clientapp``)."""
    found = []
    for pid in pids:
        with contextlib.suppress(OSError):  # it may end while being read
            if command.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def kill_session(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL every process in ``process``'s session (it was started in its own)."""
    kill_all(session_members(process.pid))


def kill_all(pids: Iterable[int]) -> None:
    """SIGKILL each of ``pids`` that is still alive (a stopped one too)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_for(condition: Any, *, timeout_s: float, what: str, alive: Any = None) -> None:
    """Poll ``condition()`` until true; fail after ``timeout_s`` or if ``alive`` dies."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if alive is not None:
            assert alive.poll() is None, f"{what}: the process ended first"
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:g} s"
        time.sleep(0.1)


def last_round(run_dir: Path) -> int:
    """The newest round in ``metrics.csv`` (-1 before round 0 is written)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return -1
    lines = path.read_text().splitlines()
    return int(lines[-1].split(",", 1)[0]) if len(lines) > 1 else -1


def metrics_records(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl``, per-client details included."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]


def node_epsilons(run_dir: Path, node_id: int) -> dict[int, float]:
    """Round -> the cumulative ε ``node_id`` reported in it."""
    return {
        record["round"]: client["epsilon"]
        for record in metrics_records(run_dir)
        for client in record.get("clients", [])
        if client["node-id"] == node_id
    }


def ledger_rounds(node: Node) -> list[int]:
    """The rounds in the node's ledger file so far (none before its first round)."""
    paths = list(node.state_dir.glob("privacy-ledger-*.json"))  # written atomically
    rounds: list[int] = read_json(paths[0])["server-rounds"] if paths else []
    return rounds


def ledger_epsilon(document: Mapping[str, Any], delta: float) -> float:
    """ε of a ledger file's entries, from Opacus's RDP accountant directly."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = list(
        zip(
            document["noise-multipliers"],
            document["sample-rates"],
            document["steps"],
            strict=True,
        )
    )
    return float(accountant.get_epsilon(delta))


def log_text(path: Path, *, offset: int = 0) -> str:
    """A process log from byte ``offset`` on (logs are appended across restarts)."""
    with path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def ledger(node: Node) -> dict[str, Any]:
    """The node's one privacy ledger file."""
    (path,) = node.state_dir.glob("privacy-ledger-*.json")
    content: dict[str, Any] = read_json(path)
    return content

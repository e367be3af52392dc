"""The Ray cluster a simulation runs on: the engine's own, or the user's.

Flower's Ray backend calls ``ray.init()`` when the first round's messages are
queued. With no address that starts a single-node cluster inside the run (GCS,
raylet, a minimal dashboard head, the dashboard and runtime-env agents, the log
monitor, the autoscaler monitor); Flower 1.42 already leaves the dashboard UI
out (``include_dashboard=False``). Its ``--federation-config`` passes only
``num-cpus``, ``num-gpus``, ``logging-level`` and ``log-to-driver`` on to
``ray.init``; what else the engine skips is set through the environment the
SuperLink passes to it (:data:`ENGINE_ENV`).

Every run without a warm engine or a cluster of the user's now gets an engine
of its own (:mod:`fedge.simulations.engine`), whose lean head
(:func:`ray_head_command`: no autoscaler monitor, no dashboard, free ports)
starts in the background as soon as ``simulate()`` is called, beside the
SuperLink, while the command checks the data and imports torch; the
simulation process's ``ray.init`` then joins it. Measured 2026-12-05 on an
idle 2-core machine, 10 clients × 5 rounds, one pair of runs: round 1 ended
1.5 s sooner than with Flower's own start inside the run (11.9 against 13.4 s
after the command), because the head's processes start on the core the
command's serial work leaves free, and at the end the whole tree is ended at
once instead of through Ray's shutdown. (An earlier measurement,
under a load of 4-10 from other work, found no gain: the head's start then
competed with the SuperLink and ServerApp for cores that were not free.)

One head shared by every simulation test of a pytest worker (started once,
``RAY_ADDRESS`` pointing at it) was tried for the test suite too, and lost: the
3 runs of ``tests/integration/test_strategies.py`` used 162 s of CPU against
117 s with each run's own cluster (load ~8). A long-lived head costs CPU while
idle, and each run still starts its own actor processes and imports.

``ray.init()`` reads ``RAY_ADDRESS``: with ``--ray-address`` the SuperLink
passes the user's cluster to the engine, which joins it instead of starting one.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedge.simulations.flower_processes import free_port

RAY_ADDRESS_ENV = "RAY_ADDRESS"
# No usage-stats reporting and no metrics collection: nothing reads either, and
# each is a thread or an exporter connection the engine would otherwise set up.
# (Their effect on start-up was within the noise of 3 alternating pairs here.)
# The SuperExec the SuperLink starts polls it for a run to launch every second
# by default: a run submitted just after a poll would wait for the next one.
ENGINE_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_enable_metrics_collection": "0",
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.05",
    # The raylet starts Python workers for the first driver's default job;
    # Flower's actors need workers with a runtime_env of their own, so those
    # would import Ray for nothing, on the cores the run's start needs.
    "RAY_prestart_worker_first_driver": "false",
    "RAY_enable_worker_prestart": "false",
}
# Every port a head opens on a fixed default; free ones keep heads of parallel
# runs (and other users' clusters) apart.
_PORT_FLAGS = (
    "--port",
    "--ray-client-server-port",
    "--dashboard-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
    "--node-manager-port",
    "--object-manager-port",
)


def engine_env(ray_address: str = "") -> dict[str, str]:
    """Environment for the SuperLink that runs the simulation engine.

    Parameters
    ----------
    ray_address : str, default ""
        An existing cluster's ``HOST:PORT`` for the engine to join; empty =
        the engine starts a cluster of its own.
    """
    env = dict(ENGINE_ENV)
    if ray_address:
        env[RAY_ADDRESS_ENV] = ray_address
    return env


def ray_head_command(temp_dir: Path, *, num_cpus: int) -> tuple[list[str], str]:
    """Return a ``ray start`` command for a lean single-node head, and its address.

    The head blocks in the foreground (``--block``): started in a session of its
    own (:func:`fedge.simulations.flower_processes.start_logged`), it and every process
    it starts end with :func:`fedge.simulations.flower_processes.stop_process`, never
    with ``ray stop``, which ends every Ray cluster on the machine.

    Parameters
    ----------
    temp_dir : Path
        The head's private temp dir (sessions, sockets, logs). Unix socket paths
        live under it: keep it short (under ~40 characters).
    num_cpus : int
        CPUs the head offers.
    """
    ports = {flag: free_port() for flag in _PORT_FLAGS}
    command = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--num-cpus",
        str(num_cpus),
        "--num-gpus",
        "0",
        "--temp-dir",
        str(temp_dir),
        "--include-dashboard",
        "false",
        "--disable-usage-stats",
        # The autoscaler's monitor: nothing to scale on one fixed machine.
        "--no-monitor",
    ]
    for flag, port in ports.items():
        command += [flag, str(port)]
    return command, f"127.0.0.1:{ports['--port']}"

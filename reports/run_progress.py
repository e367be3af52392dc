"""Where a run stands, read from its run folder alone: rounds, accuracy, ε, nodes, ETA.

Everything comes from files the coordinator already writes (``config.json``,
``status.json``, ``metrics.csv``/``metrics.jsonl``, ``checkpoints/``), each
written atomically or appended line by line, so a run can be read while it is
live, from any machine that sees the folder, without talking to Flower.
"""

from __future__ import annotations

import json
import shlex
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedge.shared import keys
from fedge.shared.config import default_run_config
from fedge.shared.errors import FedgeError
from fedge.shared.flower_config_text import format_node_config
from fedge.shared.metrics_files import read_metrics_records
from fedge.shared.run_folder import (
    CENTRAL_ACCURACY,
    CHECKPOINT_DIR,
    CLIENTS,
    CONFIG_FILE,
    DROPPED,
    EPSILON_MAX,
    FAILED,
    FAILURES,
    FAULTS_FILE,
    FLOWER_LOG_FILE,
    METRICS_CSV_FILE,
    NODE_STATE_DIR,
    PARTITIONS_FILE,
    REFUSED,
    REPLIES,
    RESUMABLE,
    ROUND,
    ROUND_TIME_S,
    RUNNING,
    SAMPLED,
    STATUS_FILE,
    UNKNOWN,
    load_flat_run_config,
    read_status,
)

# Round times the ETA averages: recent rounds reflect the nodes now connected.
ETA_WINDOW_ROUNDS = 3
# Keys `fedge simulate` sets from its own flags rather than from --set.
_SIMULATE_FLAG_KEYS = {"output-dir": "--output-dir", "run-name": "--run-name"}


@dataclass(frozen=True)
class RoundProgress:
    """One finished round as ``metrics.csv`` records it (None: not recorded)."""

    round: int
    sampled: int | None
    replies: int | None
    failures: int | None
    dropped: int | None
    refused: int | None
    accuracy: float | None
    epsilon_max: float | None
    round_time_s: float | None


@dataclass(frozen=True)
class RunProgress:
    """A run folder's progress.

    Attributes
    ----------
    run_dir : str
        The folder read.
    state : str
        ``running``, ``complete``, ``failed`` or ``unknown`` (no ``status.json``).
    message : str
        Why the run ended (or "resumed from checkpoint" while running).
    planned_rounds : int or None
        ``num-server-rounds`` from ``config.json``.
    rounds_done : int
        The last round in ``metrics.csv`` (0: only the initial model).
    last_accuracy : float or None
        Central accuracy after the last round.
    epsilon_max : float or None
        The largest cumulative ε any node reached (sample-level DP).
    epsilon_per_node : dict
        Node ID (as text) -> that node's latest cumulative ε.
    rounds : list of RoundProgress
        Rounds 1 to ``rounds_done``.
    mean_round_time_s : float or None
        Mean wall time of the last :data:`ETA_WINDOW_ROUNDS` rounds.
    eta_s : float or None
        Rounds left times ``mean_round_time_s``, while running.
    resume_command : str or None
        The command that continues a failed (or stalled) run from its latest
        checkpoint; None when ``status.json`` says resuming cannot help.
    silent_s : float or None
        Seconds since the coordinator last wrote to the folder.
    stalled : bool
        Still ``running`` on disk, but silent for longer than a live coordinator
        ever is (:func:`stall_after_s`): it was killed or lost, and nothing will
        mark the folder failed.
    """

    run_dir: str
    state: str
    message: str
    planned_rounds: int | None
    rounds_done: int
    last_accuracy: float | None
    epsilon_max: float | None
    epsilon_per_node: dict[str, float] = field(default_factory=dict)
    rounds: list[RoundProgress] = field(default_factory=list)
    mean_round_time_s: float | None = None
    eta_s: float | None = None
    resume_command: str | None = None
    silent_s: float | None = None
    stalled: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (``fedge status --format json``)."""
        return asdict(self)


def read_progress(run_dir: str | Path, *, now: float | None = None) -> RunProgress:
    """Read ``run_dir``'s progress; never writes to the folder.

    ``now`` (seconds since the epoch, default the current time) dates the
    folder's last write, to tell a stalled run from a slow one.

    Raises
    ------
    FedgeError
        If ``run_dir`` is not a run folder (no ``config.json`` nor ``status.json``).
    """
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    run_config = _run_config(run_dir)
    if status.get("state") == UNKNOWN and run_config is None:
        raise FedgeError(
            f"{run_dir} is not a fedge run folder: it has neither {STATUS_FILE} nor "
            f"{CONFIG_FILE}. Give the folder output-dir/run-name of a run."
        )
    records = read_metrics_records(run_dir)
    # Round 0 is the initial model: no nodes took part.
    rounds = [_round(r) for r in records if (_number(r.get(ROUND), int) or 0) > 0]
    planned = _number((run_config or {}).get("num-server-rounds"), int)
    done = rounds[-1].round if rounds else 0
    last = records[-1] if records else {}
    per_node = _epsilon_per_node(records)
    times = [r.round_time_s for r in rounds if r.round_time_s is not None]
    mean_time = statistics.fmean(times[-ETA_WINDOW_ROUNDS:]) if times else None
    state = str(status.get("state", UNKNOWN))
    eta = None
    if state == RUNNING and planned is not None and mean_time is not None:
        eta = max(planned - done, 0) * mean_time
    epsilons = [r.epsilon_max for r in rounds if r.epsilon_max is not None]
    silent_s = _silent_s(run_dir, time.time() if now is None else now)
    stalled = (
        state == RUNNING
        and silent_s is not None
        and silent_s > stall_after_s(run_config or {}, mean_time)
    )
    return RunProgress(
        run_dir=str(run_dir),
        state=state,
        message=str(status.get("message", "")),
        planned_rounds=planned,
        rounds_done=done,
        last_accuracy=_number(last.get(CENTRAL_ACCURACY), float),
        epsilon_max=max(epsilons) if epsilons else None,
        epsilon_per_node=per_node,
        rounds=rounds,
        mean_round_time_s=mean_time,
        eta_s=eta,
        resume_command=resume_command(run_dir, run_config)
        if (state == FAILED and status.get(RESUMABLE, True) is not False) or stalled
        else None,
        silent_s=silent_s,
        stalled=stalled,
    )


def stall_after_s(run_config: dict[str, Any], mean_round_time_s: float | None) -> float:
    """Return the longest a live coordinator goes without writing to its run folder.

    It waits at most ``node-wait-timeout-s`` for nodes and ``round-timeout-s``
    for replies before it writes a round (or ends the run); twice the recent
    round time (at least a minute) covers evaluation, checkpoints and start-up.
    """
    defaults = default_run_config()

    def seconds(key: str) -> float:
        value = _number(run_config.get(key), float)
        return float(defaults[key]) if value is None else value

    margin = max(60.0, 2 * (mean_round_time_s or 0.0))
    return seconds("node-wait-timeout-s") + seconds("round-timeout-s") + margin


def _silent_s(run_dir: Path, now: float) -> float | None:
    """Seconds since the newest write to the files a live coordinator updates."""
    paths = [run_dir / STATUS_FILE, run_dir / METRICS_CSV_FILE]
    paths += list((run_dir / CHECKPOINT_DIR).glob("*"))
    stamps = [p.stat().st_mtime for p in paths if p.exists()]
    return max(0.0, now - max(stamps)) if stamps else None


def resume_command(run_dir: Path, run_config: dict[str, Any] | None) -> str | None:
    """Return the command that resumes ``run_dir``'s run, or None without a checkpoint.

    A resumed run must be configured as the original one, so the command sets
    every key whose value differs from the defaults, plus ``resume = true``. A
    folder ``fedge simulate`` made gets a ``fedge simulate`` command; any other
    gets ``flwr run`` (the connection name is the operator's).
    """
    if run_config is None or not any((run_dir / CHECKPOINT_DIR).glob("round-*.pt")):
        return None
    defaults = default_run_config()
    changed = {
        k: v for k, v in run_config.items() if k != "resume" and defaults.get(k) != v
    }
    if not _made_by_simulate(run_dir):
        settings = format_node_config({**changed, "resume": True})
        return f"flwr run . <connection> --stream --run-config {shlex.quote(settings)}"
    faults = run_dir / FAULTS_FILE
    if faults.is_file():
        changed.update(json.loads(faults.read_text()))
    # fedge simulate keeps the virtual nodes' ledgers in the folder by default.
    if changed.get("node-state-dir") == str(run_dir.resolve() / NODE_STATE_DIR):
        del changed["node-state-dir"]
    words = ["fedge", "simulate"]
    clients = _simulated_clients(run_dir)
    if clients is not None:
        words += ["--clients", str(clients)]
    for key, flag in _SIMULATE_FLAG_KEYS.items():
        if key in changed:
            words += [flag, str(changed.pop(key))]
    for key, value in {**changed, "resume": True}.items():
        words += ["--set", format_node_config({key: value})]
    return shlex.join(words)


def _made_by_simulate(run_dir: Path) -> bool:
    return (run_dir / FLOWER_LOG_FILE).is_file() or (
        run_dir / PARTITIONS_FILE
    ).is_file()


def _simulated_clients(run_dir: Path) -> int | None:
    """Virtual clients of a simulation: the rows of ``partitions.csv``."""
    path = run_dir / PARTITIONS_FILE
    if not path.is_file():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return max(len(lines) - 1, 0)


def _run_config(run_dir: Path) -> dict[str, Any] | None:
    """Return the flat run config, or None when the folder has no ``config.json``."""
    return load_flat_run_config(run_dir) or None


def _epsilon_per_node(records: list[dict[str, Any]]) -> dict[str, float]:
    """Each node's latest cumulative ε over the run (cumulative: the latest is max)."""
    latest: dict[str, float] = {}
    for record in records:
        for client in record.get(CLIENTS) or []:
            epsilon = _number(client.get(keys.EPSILON), float)
            if epsilon is not None and "node-id" in client:
                latest[str(client["node-id"])] = epsilon
    return latest


def _round(record: dict[str, Any]) -> RoundProgress:
    return RoundProgress(
        round=int(record[ROUND]),
        sampled=_number(record.get(SAMPLED), int),
        replies=_number(record.get(REPLIES), int),
        failures=_number(record.get(FAILURES), int),
        dropped=_number(record.get(DROPPED), int),
        refused=_number(record.get(REFUSED), int),
        accuracy=_number(record.get(CENTRAL_ACCURACY), float),
        epsilon_max=_number(record.get(EPSILON_MAX), float),
        round_time_s=_number(record.get(ROUND_TIME_S), float),
    )


def _number(value: Any, kind: type) -> Any:
    """``value`` as ``kind``, or None when missing, not a number, or NaN."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value != value:  # NaN: not recorded for this round
        return None
    return kind(value)

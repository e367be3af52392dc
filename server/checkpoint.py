"""Checkpoints: everything a run needs to resume, written so a crash cannot corrupt it.

Layout under ``<run_dir>/checkpoints/``::

    round-0003.pt          torch.save of plain Python objects and tensors
    round-0003.pt.sha256   its SHA-256, in ``sha256sum`` format
    latest.json            pointer to the newest complete checkpoint (+ its hash)

Every file is replaced atomically (temporary file in the same directory, fsync,
``os.replace``), and the pointer is written last: it is the commit point. The
loader trusts the pointer's target only if its hash matches and it unpickles
(``weights_only=True``, so loading runs no code from the file); otherwise it
warns with the file and reason and falls back to the previous checkpoint.

Strategy state (the server-side moments of FedAdam/FedYogi/FedAdagrad), what
the reply checks remember (refusals, the coordinator's privacy record) and the
RNG state travel in the same file, as nanoGPT's checkpoint carries its config
and optimizer state.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy

from fedge.shared.atomic_io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from fedge.shared.errors import ConfigError
from fedge.shared.run_folder import CHECKPOINT_DIR

logger = logging.getLogger(__name__)

POINTER_FILE = "latest.json"
FORMAT = "fedge-checkpoint/1"
DEFAULT_KEEP_LAST = 3
_FILE_RE = re.compile(r"^round-(\d+)\.pt$")
_NDARRAY = "__ndarray__"  # marks a NumPy array stored as a tensor
_REQUIRED = (
    "format",
    "server-round",
    "arrays",
    "strategy-state",
    "metrics-history",
    "config",
    "rng-state",
)


@dataclass(frozen=True)
class Checkpoint:
    """One loaded checkpoint.

    Attributes
    ----------
    server_round : int
        The last round completed when it was written.
    arrays : OrderedDict of str to torch.Tensor
        The global model's state dict after that round.
    strategy_state : dict
        :func:`strategy_state` output, for :func:`restore_strategy_state`.
    metrics_history : list of dict
        The metrics rows up to ``server_round``.
    config : dict
        The resolved run config it was written under.
    rng_state : dict
        Whatever random state the server keeps.
    path : Path
        The file it came from.
    reply_checks : dict
        :meth:`fedge.server.reply_check.ReplyCheck.state_dict` output.
    """

    server_round: int
    arrays: OrderedDict[str, torch.Tensor]
    strategy_state: dict[str, Any]
    metrics_history: list[dict[str, Any]]
    config: dict[str, Any]
    rng_state: dict[str, Any]
    path: Path
    reply_checks: dict[str, Any] = field(default_factory=dict)

    def array_record(self) -> ArrayRecord:
        """Return the global arrays as Flower's ArrayRecord (for ``configure_train``)."""
        return ArrayRecord(OrderedDict(self.arrays))


def checkpoint_path(run_dir: str | Path, server_round: int) -> Path:
    """``<run_dir>/checkpoints/round-0003.pt`` for round 3."""
    return Path(run_dir) / CHECKPOINT_DIR / f"round-{server_round:04d}.pt"


def save_checkpoint(
    run_dir: str | Path,
    *,
    server_round: int,
    arrays: ArrayRecord | Mapping[str, Any],
    strategy_state: dict[str, Any],
    metrics_history: list[dict[str, Any]],
    config: dict[str, Any],
    rng_state: dict[str, Any],
    reply_checks: dict[str, Any] | None = None,
    keep_last: int = DEFAULT_KEEP_LAST,
) -> Path:
    """Write the checkpoint of ``server_round`` atomically and keep the last few.

    Parameters
    ----------
    run_dir : str or Path
        The run folder; files go to its ``checkpoints/``.
    server_round : int
        The round just completed.
    arrays : ArrayRecord or mapping of str to tensor/array
        The global model after that round.
    strategy_state, metrics_history, config, rng_state, reply_checks
        Plain Python objects; NumPy arrays and tensors may appear anywhere inside.
    keep_last : int, default 3
        Checkpoints kept; older ones are deleted after the new one is committed.

    Returns
    -------
    Path
        The checkpoint file written.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    path = checkpoint_path(run_dir, server_round)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "server-round": int(server_round),
        "arrays": _state_dict(arrays),
        "strategy-state": _encode(strategy_state),
        "metrics-history": _encode(metrics_history),
        "config": _encode(config),
        "rng-state": _encode(rng_state),
        "reply-checks": _encode(reply_checks or {}),
        "created-at": time.time(),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    # Hash first, file second, pointer last: whatever a crash interrupts, the
    # pointer names a complete file whose hash is on disk.
    atomic_write_text(_sidecar(path), f"{digest}  {path.name}\n")
    atomic_write_bytes(path, data)
    atomic_write_json(
        folder / POINTER_FILE,
        {
            "format": FORMAT,
            "server-round": int(server_round),
            "file": path.name,
            "sha256": digest,
            "size-bytes": len(data),
        },
    )
    _fsync_dir(folder)
    _prune(folder, server_round, keep_last)
    return path


def load_latest_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    """Load the newest usable checkpoint of a run, or ``None`` if there is none.

    The pointer's target comes first; a corrupt one (unreadable, hash mismatch,
    not unpicklable, unexpected content) is reported with ``logging.warning``
    naming the file and the reason, and the next older checkpoint is tried.
    Files newer than the pointer were never committed and are ignored.
    """
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return None
    files = _round_files(folder)
    pointer = _read_pointer(folder, has_files=bool(files))
    if pointer is not None:
        top, name, digest = pointer
        candidates: list[tuple[int, Path, str | None]] = [(top, folder / name, digest)]
        candidates += [
            (r, p, None) for r, p in sorted(files.items(), reverse=True) if r < top
        ]
    else:
        candidates = [(r, p, None) for r, p in sorted(files.items(), reverse=True)]
    for i, (server_round, path, expected_digest) in enumerate(candidates):
        checkpoint = _try_load(path, server_round, expected_digest)
        if checkpoint is not None:
            if i > 0:
                logger.warning(
                    "Resuming from %s (round %d), the newest usable checkpoint",
                    path.name,
                    server_round,
                )
            return checkpoint
    if candidates:
        logger.warning(
            "No usable checkpoint in %s (%d tried); the run cannot resume from it",
            folder,
            len(candidates),
        )
    return None


# ----------------------------------------------------------- strategy state
def strategy_state(strategy: Strategy) -> dict[str, Any]:
    """Return what a strategy (and the wrappers around it) must carry across a resume.

    FedAdam, FedYogi and FedAdagrad keep first and second moments ``m_t`` and
    ``v_t`` between rounds (their ``current_arrays`` is reset by every
    ``configure_train``); other Flower strategies used here, and the wrappers
    around them, keep none.
    """
    chain = list(_strategy_chain(strategy))
    state: dict[str, Any] = {"strategy": type(chain[-1]).__name__}
    for s in chain:
        if hasattr(s, "m_t") and hasattr(s, "v_t"):
            state["m_t"] = _copy_arrays(s.m_t)
            state["v_t"] = _copy_arrays(s.v_t)
    return state


def restore_strategy_state(strategy: Strategy, state: dict[str, Any]) -> None:
    """Put :func:`strategy_state` output back into a freshly built strategy.

    Raises
    ------
    ConfigError
        When the checkpoint was written by another kind of strategy.
    """
    chain = list(_strategy_chain(strategy))
    built = type(chain[-1]).__name__
    if state.get("strategy") != built:
        raise ConfigError(
            f"The checkpoint holds the state of strategy {state.get('strategy')!r}, "
            f"but the run config builds {built!r}; resume with the same 'strategy' "
            "or start a new run."
        )
    for s in chain:
        if hasattr(s, "m_t") and hasattr(s, "v_t"):
            s.m_t = _copy_arrays(state.get("m_t"))
            s.v_t = _copy_arrays(state.get("v_t"))


def _strategy_chain(strategy: Strategy) -> Iterator[Strategy]:
    """Return the strategy, then what it wraps (Flower's DP wrappers and ours use ``.strategy``)."""
    current: Any = strategy
    yield current
    while isinstance(getattr(current, "strategy", None), Strategy):
        current = current.strategy
        yield current


def _copy_arrays(arrays: Mapping[str, Any] | None) -> dict[str, np.ndarray] | None:
    if arrays is None:
        return None
    return {k: np.array(v, copy=True) for k, v in arrays.items()}


# ------------------------------------------------------------------ loading
def _read_pointer(folder: Path, *, has_files: bool) -> tuple[int, str, str] | None:
    """``(round, file name, sha256)`` from ``latest.json``, or None with a warning."""
    path = folder / POINTER_FILE
    if not path.exists():
        if has_files:
            logger.warning(
                "%s is missing; looking for the newest usable checkpoint file", path
            )
        return None
    try:
        pointer = json.loads(path.read_text(encoding="utf-8"))
        server_round, name, digest = (
            int(pointer["server-round"]),
            str(pointer["file"]),
            str(pointer["sha256"]),
        )
        if _FILE_RE.match(name) is None:
            raise ValueError(f"unexpected file name {name!r}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning(
            "Checkpoint pointer %s is unreadable (%s); looking for the newest "
            "usable checkpoint file",
            path,
            e,
        )
        return None
    return server_round, name, digest


def _try_load(path: Path, server_round: int, digest: str | None) -> Checkpoint | None:
    """Load one checkpoint file, or warn why not and return None."""

    def unusable(reason: str) -> None:
        logger.warning(
            "Checkpoint %s is unusable: %s; falling back to the previous one",
            path,
            reason,
        )

    try:
        data = path.read_bytes()
    except OSError as e:
        unusable(f"cannot read it ({e})")
        return None
    expected = digest or _read_sidecar(path)
    if expected is None:
        logger.warning(
            "Checkpoint %s has no recorded sha256; loading it unverified", path
        )
    else:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            unusable(
                f"sha256 mismatch ({len(data)} bytes hash to {actual[:12]}..., "
                f"expected {expected[:12]}...; truncated or overwritten)"
            )
            return None
    try:
        payload = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        unusable(f"torch.load failed ({type(e).__name__}: {e})")
        return None
    if not isinstance(payload, dict) or any(k not in payload for k in _REQUIRED):
        unusable(f"it lacks the entries {list(_REQUIRED)}")
        return None
    if payload["format"] != FORMAT or payload["server-round"] != server_round:
        unusable(
            f"it holds format {payload['format']!r} round {payload['server-round']}, "
            f"expected {FORMAT!r} round {server_round}"
        )
        return None
    strategy_state = _decode(payload["strategy-state"])
    if "reply-checks" in payload:
        reply_checks = _decode(payload["reply-checks"])
    else:
        # Written while the reply checks lived in the strategy wrapper.
        reply_checks = strategy_state.get("wrappers", {}).get("RobustStrategy", {})
    return Checkpoint(
        server_round=server_round,
        arrays=OrderedDict(payload["arrays"]),
        strategy_state=strategy_state,
        metrics_history=_decode(payload["metrics-history"]),
        config=_decode(payload["config"]),
        rng_state=_decode(payload["rng-state"]),
        path=path,
        reply_checks=reply_checks,
    )


def _read_sidecar(path: Path) -> str | None:
    try:
        return _sidecar(path).read_text(encoding="utf-8").split()[0]
    except (OSError, IndexError):
        return None


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _round_files(folder: Path) -> dict[int, Path]:
    files = {}
    for p in folder.iterdir():
        m = _FILE_RE.match(p.name)
        if m:
            files[int(m.group(1))] = p
    return files


# ------------------------------------------------------------------ writing
def _prune(folder: Path, server_round: int, keep_last: int) -> None:
    """Delete checkpoints beyond the newest ``keep_last``, uncommitted ones, temp files."""
    files = _round_files(folder)
    kept = sorted((r for r in files if r <= server_round), reverse=True)[:keep_last]
    for r, p in files.items():
        # Rounds after this one belong to an earlier attempt that was resumed
        # from an older checkpoint: they are not this run's history any more.
        if r not in kept:
            p.unlink(missing_ok=True)
            _sidecar(p).unlink(missing_ok=True)
    for p in folder.glob("round-*.pt.sha256"):  # hash of a file never written
        if not p.with_suffix("").exists():
            p.unlink(missing_ok=True)
    for p in folder.glob(".*.tmp"):  # left by a process killed mid-write
        p.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make the renames durable (POSIX); harmless where directories can't be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _state_dict(
    arrays: ArrayRecord | Mapping[str, Any],
) -> OrderedDict[str, torch.Tensor]:
    if isinstance(arrays, ArrayRecord):
        return OrderedDict(arrays.to_torch_state_dict())
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, value in arrays.items():
        if isinstance(value, torch.Tensor):
            out[name] = value.detach().cpu()
        else:
            out[name] = torch.from_numpy(np.array(value, copy=True))
    return out


def _encode(obj: Any, where: str = "") -> Any:
    """Plain objects that ``torch.load(weights_only=True)`` accepts."""
    if isinstance(obj, np.ndarray):
        return {_NDARRAY: torch.from_numpy(np.array(obj, copy=True))}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _encode(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_encode(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if obj is None or isinstance(obj, bool | int | float | str | bytes):
        return obj
    raise TypeError(
        f"Cannot checkpoint {type(obj).__name__} at {where or 'top level'}; use "
        "plain Python objects, NumPy arrays or tensors."
    )


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_NDARRAY}:
            return obj[_NDARRAY].numpy()
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_decode(v) for v in obj)
    return obj

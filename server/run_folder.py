"""The run folder: one directory per run holding everything a person opens later.

``status.json`` says at any moment whether the folder is complete: it reads
``running`` while rounds go on, ``complete`` at the end and ``failed`` (with the
reason) if the run stopped early, so a half-done folder never passes for a
finished one.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from shared.atomic_io import atomic_write_bytes, atomic_write_json, atomic_write_text
from shared.config import RunConfig
from shared.errors import ConfigError
from shared.models import ModelSpec
from shared.preprocessing import Preprocessing
from shared.versions import package_versions

MODEL_FORMAT = "fedge-model/1"
CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
MODEL_WEIGHTS_FILE = "model.pt"
MODEL_META_FILE = "model.json"
RUN_ID_FILE = "run-id"


def resolve_run_dir(config: RunConfig) -> Path:
    """``output-dir/run-name``, or a timestamped folder when no name is given."""
    name = config.run.run_name or time.strftime("%Y%m%d-%H%M%S")
    return Path(config.run.output_dir).expanduser().resolve() / name


# Keys that may differ between a run and its resumption: they steer how the
# coordinator waits and what it writes, not what is learned.
RESUMABLE_CHANGES = frozenset(
    {"resume", "node-wait-timeout-s", "round-timeout-s", "export-onnx", "output-dir"}
)


def check_resumable(run_dir: Path, config: RunConfig) -> None:
    """Refuse to resume a folder whose run was configured differently.

    Raises
    ------
    ConfigError
        Listing every key whose value differs from the saved ``config.json``.
    """
    saved_path = run_dir / CONFIG_FILE
    if not saved_path.is_file():
        return
    saved = json.loads(saved_path.read_text()).get("run-config", {})
    current = config.to_flat()
    changed = sorted(
        k
        for k in current
        if k not in RESUMABLE_CHANGES and k in saved and saved[k] != current[k]
    )
    if changed:
        details = ", ".join(f"'{k}': {saved[k]!r} -> {current[k]!r}" for k in changed)
        raise ConfigError(
            f"Cannot resume {run_dir}: its run was configured differently ({details}). "
            "Resume with the same settings, or start a new run-name."
        )


def check_not_overwriting(run_dir: Path, config: RunConfig) -> None:
    """Refuse a folder that already holds a run unless the run resumes it.

    Raises
    ------
    ConfigError
        Naming the folder and the two ways out.
    """
    if not config.run.resume and (
        (run_dir / "metrics.csv").exists() or (run_dir / "checkpoints").exists()
    ):
        raise ConfigError(
            f"Run folder {run_dir} already holds a run; set resume = true to continue "
            "it from its latest checkpoint, or choose another run-name."
        )


def start_run_folder(
    run_dir: Path, config: RunConfig, *, resuming: bool = False
) -> None:
    """Create the folder, write ``config.json`` and mark the run as running.

    Raises
    ------
    ConfigError
        When the folder already holds a run and ``resume`` is not set: a new
        run must never overwrite an earlier one's results.
    """
    check_not_overwriting(run_dir, config)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        run_dir / CONFIG_FILE,
        {
            "config": config.to_dict(),
            "run-config": config.to_flat(),
            "versions": package_versions(),
        },
    )
    write_status(run_dir, "running", "resumed from checkpoint" if resuming else "")


def run_identity(run_dir: Path) -> str:
    """The run's own id, made once and kept across resumes (Flower's changes).

    Nodes key their privacy ledgers by it, so a resumed run continues their
    spend instead of starting a new ledger at zero.
    """
    path = run_dir / RUN_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = f"{run_dir.name}-{uuid.uuid4().hex[:12]}"
    atomic_write_text(path, run_id + "\n")
    return run_id


def write_status(run_dir: Path, state: str, message: str = "", **extra: Any) -> None:
    """Record the run's state (``running``, ``complete`` or ``failed``) and why."""
    atomic_write_json(
        run_dir / STATUS_FILE,
        {
            "state": state,
            "message": message,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
        },
    )


def read_status(run_dir: Path) -> dict[str, Any]:
    """The last status written, or ``{"state": "unknown"}`` if there is none."""
    path = run_dir / STATUS_FILE
    if not path.is_file():
        return {"state": "unknown"}
    return dict(json.loads(path.read_text()))


def save_final_model(
    run_dir: Path,
    *,
    state_dict: dict[str, torch.Tensor],
    spec: ModelSpec,
    preprocessing: Preprocessing,
    provenance: dict[str, Any],
    privacy: dict[str, Any],
    metrics: dict[str, float],
) -> None:
    """Write ``model.pt`` and ``model.json`` (the spec that rebuilds the model).

    ``model.json`` is written last: its presence means both files are whole.
    """
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    atomic_write_bytes(run_dir / MODEL_WEIGHTS_FILE, buffer.getvalue())
    atomic_write_json(
        run_dir / MODEL_META_FILE,
        {
            "format": MODEL_FORMAT,
            "spec": spec.to_dict(),
            "preprocessing": preprocessing.to_dict(),
            "provenance": {**provenance, "versions": package_versions()},
            "privacy": privacy,
            "metrics": metrics,
        },
    )

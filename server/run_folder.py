"""The coordinator's side of the run folder: where it goes, when it may be reused.

The folder's files and formats are :mod:`fedge.shared.run_folder`'s; this module
decides which folder a run writes to, refuses to overwrite an earlier run or
to resume one configured differently, keeps the run's identity across resumes,
and saves the final model. ``status.json`` reads ``running`` while rounds go
on, ``complete`` at the end and ``failed`` (with the reason) if the run stopped
early, so a half-done folder never passes for a finished one.
"""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedge.shared.atomic_io import atomic_write_bytes, atomic_write_text
from fedge.shared.config import RunConfig
from fedge.shared.errors import ConfigError
from fedge.shared.preprocessing import Preprocessing
from fedge.shared.run_folder import (
    CHECKPOINT_DIR,
    METRICS_CSV_FILE,
    MODEL_WEIGHTS_FILE,
    RUN_ID_FILE,
    RUNNING,
    ModelInfo,
    PrivacySummary,
    load_flat_run_config,
    save_run_config,
    write_model_info,
    write_status,
)

if TYPE_CHECKING:  # torch loads with the model, not with the command line
    import torch

    from fedge.shared.models import ModelSpec


def resolve_run_dir(config: RunConfig) -> Path:
    """``output-dir/run-name``, or a timestamped folder when no name is given."""
    name = config.run.run_name or time.strftime("%Y%m%d-%H%M%S")
    return Path(config.run.output_dir).expanduser().resolve() / name


# Keys that may differ between a run and its resumption: they steer how the
# coordinator waits and what it writes, not what is learned.
RESUMABLE_CHANGES = frozenset(
    {
        "resume",
        "node-wait-timeout-s",
        "round-timeout-s",
        "export-onnx",
        "sign-key",
        "output-dir",
    }
)


def check_resumable(run_dir: Path, config: RunConfig) -> None:
    """Refuse to resume a folder whose run was configured differently.

    Raises
    ------
    ConfigError
        Listing every key whose value differs from the saved ``config.json``.
    """
    saved = load_flat_run_config(run_dir)
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
        (run_dir / METRICS_CSV_FILE).exists() or (run_dir / CHECKPOINT_DIR).exists()
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
    save_run_config(run_dir, config)
    write_status(run_dir, RUNNING, "resumed from checkpoint" if resuming else "")


def run_identity(run_dir: Path) -> str:
    """Return the run's own id, made once and kept across resumes (Flower's changes).

    Nodes key their privacy ledgers by it, so a resumed run continues their
    spend instead of starting a new ledger at zero.
    """
    path = run_dir / RUN_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = f"{run_dir.name}-{uuid.uuid4().hex[:12]}"
    atomic_write_text(path, run_id + "\n")
    return run_id


def save_final_model(
    run_dir: Path,
    *,
    state_dict: dict[str, torch.Tensor],
    spec: ModelSpec,
    preprocessing: Preprocessing,
    provenance: dict[str, Any],
    privacy: PrivacySummary,
    metrics: dict[str, float],
) -> None:
    """Write ``model.pt`` and ``model.json`` (the spec that rebuilds the model).

    ``model.json`` is written last: its presence means both files are whole.
    """
    import torch

    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    atomic_write_bytes(run_dir / MODEL_WEIGHTS_FILE, buffer.getvalue())
    write_model_info(
        run_dir,
        ModelInfo(
            spec=spec,
            preprocessing=preprocessing,
            provenance=provenance,
            privacy=privacy,
            metrics=metrics,
        ),
    )

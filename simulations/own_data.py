"""Simulate on the user's own data, laid out exactly as a deployment holds it.

Two ways in:

- one file (``--data``) split among the virtual clients, by the configured
  partitioner or one client per value of a column (``--partition-by``, the
  column then dropped from the features). Without ``--eval-data`` a seeded,
  stratified :data:`HOLDOUT_FRACTION` of the file is the coordinator's central
  test set, and no client ever sees those rows;
- one file per client (``--node-data``: a folder or a glob), plus the
  coordinator's ``--eval-data`` file.

Everything is read and checked in memory first (:func:`plan_own_data`), with the
same errors as ``fedge node check`` naming the user's file, column and row, so a
bad file is refused before any file is written or process started. Then
:func:`write_own_data` lays the run out as a deployment would: each virtual
node's rows in its own file (same format as the input), ``node-<i>.<ext>`` in the
run folder's ``data/`` (``node-data-dir``), which ``client/node_data.py`` reads
with the very ``load_file`` a real node uses for its ``data-path``; the
coordinator's file is ``eval-data-path``, on which alone the preprocessing is
fitted (``server/reference_data.py``), as in a deployment.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedge.client.node_data import (
    MIN_NODE_EXAMPLES,
    NODE_FILE_STEM,
    partition_nodes,
)
from fedge.shared.config import DATASET_FILE, RunConfig
from fedge.shared.datasets import (
    SUPPORTED_SUFFIXES,
    encode_table,
    fit_file,
    load_file,
    read_table,
    split_indices,
)
from fedge.shared.errors import ConfigError, DataError
from fedge.shared.partition import partition_stats
from fedge.shared.preprocessing import (
    IMAGE_SHAPE_ATTR,
    SERIES_SHAPE_ATTR,
    Preprocessing,
    fit_preprocessing,
)
from fedge.simulations.scenario_file import DEFAULT_CLIENTS

HOLDOUT_FRACTION = 0.2  # of --data, the coordinator's central test set
DATA_DIR = "data"  # in the run folder: node files and the hold-out
HOLDOUT_STEM = "central-test"
SOURCE_COLUMN = "data"  # partitions.csv: what each client holds


@dataclass(frozen=True)
class OwnData:
    """Where the user's data comes from (``fedge simulate`` flags or scenario).

    Attributes
    ----------
    data : str
        One CSV/Parquet/.npz file to split among the clients.
    node_data : str
        A folder or glob of files, one per client.
    partition_by : str
        With ``data``: one client per distinct value of this column.
    """

    data: str = ""
    node_data: str = ""
    partition_by: str = ""

    @property
    def active(self) -> bool:
        """Whether the run trains on the user's files at all."""
        return bool(self.data or self.node_data)


@dataclass(frozen=True)
class OwnDataPlan:
    """The checked data of a run, before anything is written.

    Attributes
    ----------
    node_sources : list of str
        What each client holds: the user's file, or ``column=value``.
    node_frames : list of DataFrame
        With ``--data``: each client's rows, as read (no encoding); else empty.
    linked_files : list of Path
        With ``--node-data``: each client's own file, linked as is; else empty.
    holdout : DataFrame or None
        The central test rows taken from ``data``; None with ``--eval-data``.
    eval_data_path : str
        The user's ``--eval-data`` file, or "" when ``holdout`` is written.
    suffix : str
        File type of the input (``.csv``, ``.parquet``, ``.npz``).
    label_column : str
    partitions : DataFrame
        ``partitions.csv``: examples and label counts per client, plus
        :data:`SOURCE_COLUMN`.
    preprocessing : Preprocessing
        The coordinator's encoding, fitted on its held-out part: the model's
        input shape and classes.
    """

    node_sources: list[str]
    node_frames: list[pd.DataFrame]
    linked_files: list[Path]
    holdout: pd.DataFrame | None
    eval_data_path: str
    suffix: str
    label_column: str
    partitions: pd.DataFrame
    preprocessing: Preprocessing

    @property
    def num_clients(self) -> int:
        """One virtual client per node file."""
        return len(self.node_sources)


def plan_own_data(
    source: OwnData, config: RunConfig, *, num_clients: int | None
) -> OwnDataPlan:
    """Read and check the user's data and decide each client's rows.

    Parameters
    ----------
    source : OwnData
    config : RunConfig
        Its data section gives the label column, imputation, partitioner and
        seed; ``eval-data-path`` is the user's ``--eval-data`` (or "").
    num_clients : int or None
        The client count asked for; None = the default (10) for a partitioner,
        or as many as the data defines (files, column values).

    Raises
    ------
    ConfigError
        Conflicting options (``--data`` with ``--node-data``, ``--partition-by``
        without ``--data``, a client count the data contradicts, ...).
    DataError
        A file that cannot be used, naming file, column and row.
    """
    data = config.data
    if source.data and source.node_data:
        raise ConfigError(
            "--data and --node-data both given: use --data for one file split "
            "among the clients, or --node-data for one file per client"
        )
    if source.partition_by and not source.data:
        raise ConfigError(
            f"--partition-by {source.partition_by} splits the --data file; "
            "give --data FILE (with --node-data each file already is one client)"
        )
    if source.node_data:
        return _plan_node_files(source.node_data, config, num_clients=num_clients)
    return _plan_one_file(
        Path(source.data),
        config,
        partition_by=source.partition_by,
        num_clients=num_clients,
        eval_data_path=data.eval_data_path,
    )


def run_config_keys(plan: OwnDataPlan, run_dir: Path) -> dict[str, Any]:
    """Return the run-config keys that point the apps at the files :func:`write_own_data` writes."""
    data_dir = run_dir / DATA_DIR
    eval_path = plan.eval_data_path or str(data_dir / f"{HOLDOUT_STEM}{plan.suffix}")
    return {
        "dataset": DATASET_FILE,
        "eval-data-path": eval_path,
        "node-data-dir": str(data_dir),
        "label-column": plan.label_column,
    }


def write_own_data(plan: OwnDataPlan, run_dir: Path) -> None:
    """Write each client's file (and the hold-out) into ``run_dir/data``."""
    data_dir = run_dir / DATA_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    for partition_id, frame in enumerate(plan.node_frames):
        stem = NODE_FILE_STEM.format(partition_id=partition_id)
        _write_table(frame, data_dir / f"{stem}{plan.suffix}", plan.label_column)
    for partition_id, source in enumerate(plan.linked_files):
        # The node holds the user's own file, untouched, as a SuperNode would.
        stem = NODE_FILE_STEM.format(partition_id=partition_id)
        link = data_dir / f"{stem}{source.suffix.lower()}"
        link.unlink(missing_ok=True)  # a resumed run lays its folder out again
        link.symlink_to(source.resolve())
    if plan.holdout is not None:
        _write_table(
            plan.holdout,
            data_dir / f"{HOLDOUT_STEM}{plan.suffix}",
            plan.label_column,
        )


# ---------------------------------------------------------------- one file
def _plan_one_file(
    path: Path,
    config: RunConfig,
    *,
    partition_by: str,
    num_clients: int | None,
    eval_data_path: str,
) -> OwnDataPlan:
    data = config.data
    frame = read_table(path, label_column=data.label_column)
    suffix = path.suffix.lower()
    site = None
    if partition_by:
        if suffix == ".npz":
            raise ConfigError(
                f"--partition-by {partition_by}: {path} is an .npz file, whose "
                "columns are unnamed pixels or features; give one .npz per client "
                "with --node-data instead"
            )
        if partition_by not in frame.columns:
            raise DataError(
                f"partition column {partition_by!r} not found in {path}; "
                f"columns found: {[str(c) for c in frame.columns]}"
            )
        site = frame[partition_by]
        if site.isna().any():
            first = int(np.flatnonzero(site.isna().to_numpy())[0])
            raise DataError(
                f"missing value in partition column {partition_by!r} (file {path}, "
                f"data row {first + 1}, 1-based, header excluded); every row needs "
                "the client it belongs to"
            )
        frame = frame.drop(columns=[partition_by])
    # The whole file first, encoded with its own fit: every missing value,
    # non-numeric cell and missing label is reported with this file's row.
    whole = encode_table(
        frame,
        fit_preprocessing(
            frame, label_column=data.label_column, impute=data.impute, source=str(path)
        ),
        str(path),
    )
    held_out = (
        read_table(eval_data_path, label_column=data.label_column)
        if (eval_data_path and partition_by)
        else None
    )
    if held_out is not None and partition_by in held_out.columns:
        # The coordinator's file has the clients' columns, the site among them:
        # the run uses a copy without it, written beside the clients' files.
        holdout = held_out.drop(columns=[partition_by])
        reference = encode_table(
            holdout,
            fit_preprocessing(
                holdout,
                label_column=data.label_column,
                impute=data.impute,
                source=eval_data_path,
            ),
            eval_data_path,
        )
        client_rows = np.arange(len(frame))
        eval_data_path = ""
    elif eval_data_path:
        holdout = None
        reference = fit_file(
            eval_data_path, label_column=data.label_column, impute=data.impute
        )
        client_rows = np.arange(len(frame))
    else:
        client_rows, held = split_indices(
            whole.y, HOLDOUT_FRACTION, seed=data.partition_seed
        )
        holdout = frame.iloc[held]
        reference_prep = fit_preprocessing(
            holdout,
            label_column=data.label_column,
            impute=data.impute,
            source=f"the hold-out of {path}",
        )
        reference = encode_table(holdout, reference_prep, f"the hold-out of {path}")
    # Every row with the coordinator's encoding, rows numbered as in the file:
    # labels the central test set lacks are refused here, naming the row.
    labels = encode_table(frame, reference.preprocessing, str(path)).y
    if site is not None:
        parts, sources = _split_by_column(
            site.to_numpy()[client_rows], client_rows, partition_by, num_clients
        )
    else:
        wanted = DEFAULT_CLIENTS if num_clients is None else num_clients
        parts = [
            client_rows[p] for p in partition_nodes(labels[client_rows], wanted, data)
        ]
        sources = [f"{path} ({data.partitioning})"] * len(parts)
    _check_sizes([len(p) for p in parts], sources)
    return OwnDataPlan(
        node_sources=sources,
        node_frames=[frame.iloc[p] for p in parts],
        linked_files=[],
        holdout=holdout,
        eval_data_path=eval_data_path,
        suffix=suffix,
        label_column=data.label_column,
        partitions=_stats(labels, parts, reference.preprocessing.num_classes, sources),
        preprocessing=reference.preprocessing,
    )


def _split_by_column(
    values: np.ndarray,
    rows: np.ndarray,
    column: str,
    num_clients: int | None,
) -> tuple[list[np.ndarray], list[str]]:
    """One client per distinct value, in sorted order of the values as text."""
    keys = np.array([str(v) for v in values], dtype=object)
    distinct = sorted(set(keys))
    if num_clients is not None and num_clients != len(distinct):
        raise ConfigError(
            f"--partition-by {column} makes {len(distinct)} clients (one per "
            f"value: {_preview(distinct)}), but the client count is set to "
            f"{num_clients}; drop --clients (or the scenario's 'clients')"
        )
    parts = [rows[keys == value] for value in distinct]
    return parts, [f"{column}={value}" for value in distinct]


# ---------------------------------------------------------------- one file per node
def _plan_node_files(
    pattern: str, config: RunConfig, *, num_clients: int | None
) -> OwnDataPlan:
    data = config.data
    if not data.eval_data_path:
        raise ConfigError(
            f"--node-data {pattern} needs --eval-data FILE: the coordinator's "
            "held-out file, on which the preprocessing is fitted and the model "
            "evaluated, as in a deployment"
        )
    files = _node_files(pattern, exclude=Path(data.eval_data_path))
    if num_clients is not None and num_clients != len(files):
        raise ConfigError(
            f"--node-data {pattern} holds {len(files)} files (one per client), "
            f"but the client count is set to {num_clients}; drop --clients (or "
            "the scenario's 'clients')"
        )
    reference = fit_file(
        data.eval_data_path, label_column=data.label_column, impute=data.impute
    )
    labels, parts, offset = [], [], 0
    for path in files:
        # As each real node reads its data-path: errors name the user's file.
        dataset = load_file(path, reference.preprocessing)
        labels.append(dataset.y)
        parts.append(np.arange(offset, offset + len(dataset)))
        offset += len(dataset)
    sources = [str(p) for p in files]
    _check_sizes([len(p) for p in parts], sources)
    return OwnDataPlan(
        node_sources=sources,
        node_frames=[],
        linked_files=files,
        holdout=None,
        eval_data_path=data.eval_data_path,
        suffix="",
        label_column=data.label_column,
        partitions=_stats(
            np.concatenate(labels), parts, reference.preprocessing.num_classes, sources
        ),
        preprocessing=reference.preprocessing,
    )


def _node_files(pattern: str, *, exclude: Path) -> list[Path]:
    """Return the files a folder or glob names, sorted, the coordinator's file left out."""
    root = Path(pattern)
    if root.is_dir():
        candidates = sorted(p for p in root.iterdir() if p.is_file())
    else:
        candidates = sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_file())
    excluded = exclude.resolve()
    files = [
        p
        for p in candidates
        if p.suffix.lower() in SUPPORTED_SUFFIXES and p.resolve() != excluded
    ]
    if not files:
        raise DataError(
            f"--node-data {pattern} names no data files (expected one "
            f"{'/'.join(SUPPORTED_SUFFIXES)} file per client"
            + (f"; found {[p.name for p in candidates][:5]}" if candidates else "")
            + ")"
        )
    return files


# ---------------------------------------------------------------- shared
def _check_sizes(sizes: list[int], sources: list[str]) -> None:
    small = [
        (s, n) for s, n in zip(sources, sizes, strict=True) if n < MIN_NODE_EXAMPLES
    ]
    if small:
        raise DataError(
            f"{len(small)} client(s) would hold fewer than {MIN_NODE_EXAMPLES} "
            f"examples (one to train, one to test): "
            + ", ".join(f"{s}: {n}" for s, n in small[:5])
            + "; use fewer clients, or merge the smallest groups"
        )


def _stats(
    labels: np.ndarray, parts: list[np.ndarray], num_classes: int, sources: list[str]
) -> pd.DataFrame:
    stats = partition_stats(labels, parts, num_classes)
    stats.insert(2, SOURCE_COLUMN, sources)
    return stats


def _write_table(frame: pd.DataFrame, path: Path, label_column: str) -> None:
    """Write rows in the format ``read_table`` reads back as the same table."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:  # .npz: x (flat features, series or images) and y, as read_table expects
        x = frame.drop(columns=[label_column]).to_numpy()
        shape = frame.attrs.get(IMAGE_SHAPE_ATTR) or frame.attrs.get(SERIES_SHAPE_ATTR)
        if shape is not None:
            x = x.reshape(len(frame), *shape)
        np.savez(path, x=x, y=frame[label_column].to_numpy())


def _preview(values: list[str]) -> str:
    shown = ", ".join(values[:5])
    return shown + (f", ... ({len(values)} in all)" if len(values) > 5 else "")

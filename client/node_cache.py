"""A node's data, loaded and split once: in memory per process, on disk per run.

:func:`fedge.client.node_data.load_node_data` reads a file with pandas (or a built-in
set with scikit-learn), encodes it and partitions it: hundreds of milliseconds
plus about a second and a half of imports. Every message needs the same
result, so:

- **in memory** (simulation: worker processes serve many messages), keyed by
  everything the result depends on: the data config, the node config, the
  preprocessing JSON and, for a node reading a file (its ``data-path``, or its
  file in ``node-data-dir`` in a simulation on users' data), the file's path,
  size and modification time;
- **on disk** under the node's own ``state-dir`` (deployment: every message is
  a fresh process), as the encoded arrays in one ``.npz``, named by a SHA-256
  of the run id, the same inputs and the file's *contents*. A later message
  then needs neither pandas nor scikit-learn. Only the newest such file is
  kept; a changed file, config or run gives a new name, never stale arrays.

A cache file that cannot be read is ignored (and replaced): the data is then
loaded from its source as if there were no cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from fedge.client.node_data import NodeData, load_node_data, node_data_file
from fedge.shared import keys
from fedge.shared.atomic_io import atomic_write_bytes
from fedge.shared.config import DATASET_FILE, DataConfig
from fedge.shared.datasets import Dataset
from fedge.shared.errors import DataError
from fedge.shared.preprocessing import Preprocessing

logger = logging.getLogger(__name__)

CACHE_PREFIX = "node-data-"
# Bump when the arrays a key names could change (loading or splitting code).
CACHE_FORMAT = 1
# Bound on the arrays kept in memory by one process, over all virtual nodes.
MEMORY_BUDGET_BYTES = 512 * 2**20
_ARRAYS = ("train_x", "train_y", "test_x", "test_y")

_memory: OrderedDict[str, NodeData] = OrderedDict()
_memory_bytes = 0


def cached_node_data(
    node_config: Mapping[str, Any],
    data: DataConfig,
    preprocessing_json: str,
    *,
    run_id: str | int,
) -> NodeData:
    """:func:`load_node_data`, served from memory or the node's state-dir if it can.

    Parameters
    ----------
    node_config : mapping
        ``context.node_config``.
    data : DataConfig
        The run's data settings.
    preprocessing_json : str
        The federation's preprocessing, as the server sent it.
    run_id : str or int
        Names the run in the on-disk key (one cache file per run).

    Raises
    ------
    DataError
        As :func:`load_node_data` (errors are never cached).
    """
    key = _memory_key(node_config, data, preprocessing_json)
    found = _memory.get(key)
    if found is not None:
        _memory.move_to_end(key)
        return found
    disk_path = _disk_path(node_config, data, preprocessing_json, run_id)
    found = _read_disk(disk_path, preprocessing_json) if disk_path else None
    if found is None:
        preprocessing = Preprocessing.from_json(preprocessing_json)
        found = load_node_data(node_config, data, preprocessing)
        if disk_path is not None:
            _write_disk(disk_path, found)
    _remember(key, found)
    return found


def clear_memory() -> None:
    """Forget the in-memory entries (tests; a process changing data under itself)."""
    global _memory_bytes
    _memory.clear()
    _memory_bytes = 0


def _inputs(
    node_config: Mapping[str, Any], data: DataConfig, preprocessing_json: str
) -> list[Any]:
    return [
        CACHE_FORMAT,
        asdict(data),
        sorted((str(k), repr(v)) for k, v in node_config.items()),
        preprocessing_json,
    ]


def _source_file(node_config: Mapping[str, Any], data: DataConfig) -> Path | None:
    """Return the file this node's data is read from, if any (as load_node_data finds it)."""
    if node_config.get(keys.DATA_PATH):
        return Path(str(node_config[keys.DATA_PATH])).expanduser()
    if data.dataset == DATASET_FILE and data.node_data_dir:
        try:
            return node_data_file(
                data.node_data_dir, int(node_config[keys.PARTITION_ID])
            )
        except (DataError, KeyError, TypeError, ValueError):
            return None  # load_node_data raises the clear error
    return None


def _memory_key(
    node_config: Mapping[str, Any], data: DataConfig, preprocessing_json: str
) -> str:
    identity = None
    path = _source_file(node_config, data)
    if path is not None:
        try:
            stat = path.stat()
            identity = [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
        except OSError:
            identity = ["unreadable", str(path)]  # load_node_data says why
    return json.dumps([*_inputs(node_config, data, preprocessing_json), identity])


def _disk_path(
    node_config: Mapping[str, Any],
    data: DataConfig,
    preprocessing_json: str,
    run_id: str | int,
) -> Path | None:
    """Where this node caches its arrays for this run, or None (no state-dir)."""
    state_dir = node_config.get(keys.STATE_DIR)
    if not state_dir:
        return None
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            [str(run_id), *_inputs(node_config, data, preprocessing_json)]
        ).encode()
    )
    path = _source_file(node_config, data)
    if path is not None:
        try:
            with path.open("rb") as f:
                digest.update(hashlib.file_digest(f, "sha256").digest())
        except OSError:
            return None  # load_node_data raises the clear error
    name = f"{CACHE_PREFIX}{digest.hexdigest()[:24]}.npz"
    return Path(str(state_dir)).expanduser() / name


def _read_disk(path: Path, preprocessing_json: str) -> NodeData | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in _ARRAYS}
            source = str(archive["source"])
        preprocessing = Preprocessing.from_json(preprocessing_json)
        return NodeData(
            train=Dataset(arrays["train_x"], arrays["train_y"], preprocessing, source),
            test=Dataset(arrays["test_x"], arrays["test_y"], preprocessing, source),
        )
    except Exception as e:  # any unreadable cache is only a cache miss
        logger.warning("ignoring the unreadable data cache %s (%s)", path, e)
        return None


def _write_disk(path: Path, node_data: NodeData) -> None:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        train_x=node_data.train.x,
        train_y=node_data.train.y,
        test_x=node_data.test.x,
        test_y=node_data.test.y,
        source=np.array(node_data.train.source),
    )
    try:
        atomic_write_bytes(path, buffer.getvalue())
        for old in path.parent.glob(f"{CACHE_PREFIX}*.npz"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError as e:  # a full or read-only disk costs speed, not the round
        logger.warning("could not write the data cache %s (%s)", path, e)


def _remember(key: str, node_data: NodeData) -> None:
    global _memory_bytes
    _memory[key] = node_data
    _memory_bytes += _size_bytes(node_data)
    while _memory_bytes > MEMORY_BUDGET_BYTES and len(_memory) > 1:
        _, evicted = _memory.popitem(last=False)
        _memory_bytes -= _size_bytes(evicted)


def _size_bytes(node_data: NodeData) -> int:
    return sum(
        part.x.nbytes + part.y.nbytes for part in (node_data.train, node_data.test)
    )

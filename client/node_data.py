"""Find and load a node's own data from its node config.

A real node names its file with ``data-path`` (CSV, Parquet or .npz). A virtual
node in simulation gets ``partition-id``/``num-partitions``: of a built-in
dataset, split by the configured partitioner, or, with ``dataset = "file"``, the
file ``node-<partition-id>.<csv|parquet|npz>`` in ``node-data-dir`` that
``fedge simulate`` wrote for it, read exactly as a real node reads its
``data-path``. Either way the node keeps a small local test split for federated
evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedge.shared import keys
from fedge.shared.config import DATASET_FILE, DataConfig
from fedge.shared.datasets import (
    SUPPORTED_SUFFIXES,
    Dataset,
    load_builtin,
    load_file,
    split_train_test,
)
from fedge.shared.errors import DataError
from fedge.shared.partition import partition_indices
from fedge.shared.preprocessing import Preprocessing

LOCAL_TEST_FRACTION = 0.1  # held out on each node for federated evaluation
NODE_FILE_STEM = "node-{partition_id}"  # a virtual node's file in node-data-dir
MIN_NODE_EXAMPLES = 2  # one example to train on and one to test


@dataclass(frozen=True)
class NodeData:
    """A node's local training and test splits."""

    train: Dataset
    test: Dataset


def load_node_data(
    node_config: Mapping[str, Any], data: DataConfig, preprocessing: Preprocessing
) -> NodeData:
    """Load this node's data as the node config and run config describe.

    Raises
    ------
    DataError
        If the node config names neither a file nor a partition, or the data
        cannot be read or does not match the federation's preprocessing.
    """
    if node_config.get(keys.DATA_PATH):
        dataset = load_file(str(node_config[keys.DATA_PATH]), preprocessing)
    elif keys.PARTITION_ID in node_config and keys.NUM_PARTITIONS in node_config:
        if data.dataset == DATASET_FILE and data.node_data_dir:
            path = node_data_file(
                data.node_data_dir, int(node_config[keys.PARTITION_ID])
            )
            dataset = load_file(path, preprocessing)
        elif data.dataset == DATASET_FILE:
            raise DataError(
                "This run trains on nodes' own files (dataset = 'file'), but this "
                f"node has no '{keys.DATA_PATH}' in its node config; start it with "
                f"--node-config '{keys.DATA_PATH}=\"/path/to/data.csv\"'."
            )
        else:
            dataset = _builtin_partition(
                data,
                int(node_config[keys.PARTITION_ID]),
                int(node_config[keys.NUM_PARTITIONS]),
            )
    else:
        raise DataError(
            f"Node config {dict(node_config)} names no data: give '{keys.DATA_PATH}' "
            f"(a CSV/Parquet/.npz file) or '{keys.PARTITION_ID}' and '{keys.NUM_PARTITIONS}'."
        )
    if len(dataset) < MIN_NODE_EXAMPLES:
        raise DataError(
            f"{dataset.source} holds {len(dataset)} example(s); a node needs at "
            "least 2 (one to train, one to test)."
        )
    train, test = split_train_test(
        dataset, test_fraction=LOCAL_TEST_FRACTION, seed=data.partition_seed
    )
    return NodeData(train=train, test=test)


def node_data_file(node_data_dir: str | Path, partition_id: int) -> Path:
    """Return the file of virtual node ``partition_id`` in ``node_data_dir``.

    Raises
    ------
    DataError
        If the folder holds no ``node-<partition_id>`` file of a supported type.
    """
    stem = NODE_FILE_STEM.format(partition_id=partition_id)
    for suffix in SUPPORTED_SUFFIXES:
        path = Path(node_data_dir) / f"{stem}{suffix}"
        if path.is_file():
            return path
    raise DataError(
        f"no data file for partition {partition_id} in node-data-dir "
        f"{node_data_dir}: expected {stem} with one of {list(SUPPORTED_SUFFIXES)}; "
        "fedge simulate --data / --node-data writes these files"
    )


def _builtin_partition(
    data: DataConfig, partition_id: int, num_partitions: int
) -> Dataset:
    if not 0 <= partition_id < num_partitions:
        raise DataError(
            f"'{keys.PARTITION_ID}' must be in [0, {num_partitions}), got {partition_id}."
        )
    full = load_builtin(data.dataset, "train")
    parts = partition_nodes(full.y, num_partitions, data)
    return full.subset(parts[partition_id])


def partition_nodes(
    labels: np.ndarray, num_partitions: int, data: DataConfig
) -> list[np.ndarray]:
    """Split ``labels`` over ``num_partitions`` nodes by the run's partitioner.

    The one place that turns the data config into a partitioner call: a virtual
    node takes its part of this split, the simulation's preflight checks the very
    same split (same seed, same draw) before any node starts, and a simulation on
    one file of the user's own data splits its rows by it.

    Returns
    -------
    list of ndarray
        Each node's indices into ``labels``.

    Raises
    ------
    DataError
        The partitioner's errors (:func:`~fedge.shared.partition.partition_indices`).
    """
    return partition_indices(
        labels,
        num_partitions,
        data.partitioning,
        seed=data.partition_seed,
        alpha=data.dirichlet_alpha,
        shards_per_client=data.shards_per_client,
        min_partition_size=MIN_NODE_EXAMPLES,
    )

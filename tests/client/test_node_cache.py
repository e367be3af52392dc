"""The node's data cache: same inputs served without reloading, changed ones never stale."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from fedge.client import node_cache
from fedge.client.node_cache import cached_node_data
from fedge.client.node_data import load_node_data
from fedge.shared.config import from_run_config
from fedge.shared.datasets import fit_file, load_builtin


@pytest.fixture(autouse=True)
def _empty_memory():
    node_cache.clear_memory()
    yield
    node_cache.clear_memory()


def data_config(**overrides):
    return from_run_config(overrides, fill_defaults=True).data


@pytest.fixture
def federation(tmp_path):
    """A file federation: reference ages 20, 30, 40 and the node's own CSV."""
    ref = tmp_path / "reference.csv"
    pd.DataFrame({"age": [20, 30, 40], "label": ["a", "b", "a"]}).to_csv(
        ref, index=False
    )
    prep = fit_file(ref, label_column="label").preprocessing
    node_file = tmp_path / "node.csv"
    write_node_file(node_file, ages=[10, 20, 30, 40, 50, 60])
    config = data_config(dataset="file", **{"eval-data-path": str(ref)})
    return config, prep.to_json(), node_file


def write_node_file(path, ages):
    labels = ["a", "b"] * (len(ages) // 2)
    pd.DataFrame({"age": ages, "label": labels}).to_csv(path, index=False)


AGE_MEAN, AGE_STD = 30.0, np.sqrt(200 / 3)  # of the reference ages 20, 30, 40


def all_ages(node):
    """The node's raw ages, decoded from the standardised feature."""
    x = np.concatenate([node.train.x[:, 0], node.test.x[:, 0]])
    return sorted(np.round(x * AGE_STD + AGE_MEAN).astype(int).tolist())


def count_loads(monkeypatch):
    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return load_node_data(*args, **kwargs)

    monkeypatch.setattr(node_cache, "load_node_data", counting)
    return calls


def test_a_repeated_message_is_served_from_memory(monkeypatch):
    loads = count_loads(monkeypatch)
    config = data_config()
    prep = load_builtin("digits", "test").preprocessing.to_json()
    node = {"partition-id": 1, "num-partitions": 4}
    first = cached_node_data(node, config, prep, run_id=1)
    assert cached_node_data(dict(node), config, prep, run_id=1) is first
    assert len(loads) == 1
    # Another partition, partitioning or seed is other data, loaded afresh.
    other_node = cached_node_data({**node, "partition-id": 2}, config, prep, run_id=1)
    other_split = cached_node_data(
        node, data_config(partitioning="shards"), prep, run_id=1
    )
    assert len(loads) == 3
    assert not np.array_equal(other_node.train.y, first.train.y)
    assert not np.array_equal(other_split.train.y, first.train.y)


def test_a_changed_file_is_reloaded_not_served_stale(federation, monkeypatch):
    config, prep, node_file = federation
    loads = count_loads(monkeypatch)
    node = {"data-path": str(node_file)}
    assert all_ages(cached_node_data(node, config, prep, run_id=1)) == [
        10,
        20,
        30,
        40,
        50,
        60,
    ]
    write_node_file(node_file, ages=[11, 21, 31, 41, 51, 61, 71, 81])
    # Even if the clock did not move, the size changed; force another mtime too.
    os.utime(node_file, ns=(1, 1))
    changed = cached_node_data(node, config, prep, run_id=1)
    assert all_ages(changed) == [11, 21, 31, 41, 51, 61, 71, 81]
    assert len(loads) == 2


def test_a_fresh_process_reads_the_state_dir_cache(federation, tmp_path, monkeypatch):
    config, prep, node_file = federation
    node = {"data-path": str(node_file), "state-dir": str(tmp_path / "state")}
    first = cached_node_data(node, config, prep, run_id=5)
    assert len(list((tmp_path / "state").glob("node-data-*.npz"))) == 1

    node_cache.clear_memory()  # what a new flwr-clientapp process starts with
    loads = count_loads(monkeypatch)
    again = cached_node_data(node, config, prep, run_id=5)
    assert loads == []
    for part in ("train", "test"):
        np.testing.assert_array_equal(getattr(again, part).x, getattr(first, part).x)
        np.testing.assert_array_equal(getattr(again, part).y, getattr(first, part).y)
    assert again.train.source == first.train.source == str(node_file)


def test_the_state_dir_cache_follows_file_contents_and_run(
    federation, tmp_path, monkeypatch
):
    config, prep, node_file = federation
    node = {"data-path": str(node_file), "state-dir": str(tmp_path / "state")}
    cached_node_data(node, config, prep, run_id=5)
    node_cache.clear_memory()
    # Same size and mtime, other contents: only the content hash can tell.
    stat = node_file.stat()
    write_node_file(node_file, ages=[60, 50, 40, 30, 20, 11])
    os.utime(node_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    loads = count_loads(monkeypatch)
    changed = cached_node_data(node, config, prep, run_id=5)
    assert len(loads) == 1 and all_ages(changed) == [11, 20, 30, 40, 50, 60]
    node_cache.clear_memory()
    cached_node_data(node, config, prep, run_id=6)  # another run: loaded afresh
    assert len(loads) == 2
    # Only the newest cache file is kept.
    assert len(list((tmp_path / "state").glob("node-data-*.npz"))) == 1


def test_an_unreadable_cache_file_is_only_a_miss(federation, tmp_path, monkeypatch):
    config, prep, node_file = federation
    node = {"data-path": str(node_file), "state-dir": str(tmp_path / "state")}
    expected = cached_node_data(node, config, prep, run_id=5)
    (cache_file,) = (tmp_path / "state").glob("node-data-*.npz")
    cache_file.write_bytes(b"not an npz")
    node_cache.clear_memory()
    loads = count_loads(monkeypatch)
    again = cached_node_data(node, config, prep, run_id=5)
    assert len(loads) == 1
    np.testing.assert_array_equal(again.train.x, expected.train.x)
    np.testing.assert_array_equal(np.load(cache_file)["train_x"], expected.train.x)


def test_a_virtual_nodes_file_in_node_data_dir_is_keyed_by_its_contents(
    federation, tmp_path, monkeypatch
):
    _, prep, _ = federation
    folder = tmp_path / "nodes"
    folder.mkdir()
    write_node_file(folder / "node-0.csv", ages=[10, 20, 30, 40])
    config = data_config(
        dataset="file",
        **{"eval-data-path": str(tmp_path / "reference.csv")},
        **{"node-data-dir": str(folder)},
    )
    node = {"partition-id": 0, "num-partitions": 1}
    loads = count_loads(monkeypatch)
    assert all_ages(cached_node_data(node, config, prep, run_id=1)) == [10, 20, 30, 40]
    assert all_ages(cached_node_data(node, config, prep, run_id=1)) == [10, 20, 30, 40]
    assert len(loads) == 1
    write_node_file(folder / "node-0.csv", ages=[15, 25, 35, 45, 55, 65])
    assert all_ages(cached_node_data(node, config, prep, run_id=1)) == [
        15,
        25,
        35,
        45,
        55,
        65,
    ]

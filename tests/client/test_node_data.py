import math

import numpy as np
import pandas as pd
import pytest

from fedge.client.node_data import LOCAL_TEST_FRACTION, load_node_data
from fedge.shared.config import from_run_config
from fedge.shared.datasets import fit_file, load_builtin
from fedge.shared.errors import DataError

AGE_STD = math.sqrt(200 / 3)  # population std of the reference ages 20, 30, 40


def data_config(**overrides):
    return from_run_config(overrides, fill_defaults=True).data


def rows(datasets):
    """Every (features, label) row of the datasets, as a sorted array."""
    x = np.concatenate([d.x.reshape(len(d), -1) for d in datasets])
    y = np.concatenate([d.y for d in datasets]).astype(np.float64)
    table = np.column_stack([x.astype(np.float64), y])
    return table[np.lexsort(table.T[::-1])]


def split_sizes(n, k):
    # iid: near-equal parts; the first n % k parts get one more.
    base, extra = divmod(n, k)
    return [base + 1] * extra + [base] * (k - extra)


# ---------------------------------------------------------------- partitions
@pytest.mark.parametrize(
    ("dataset", "num_partitions"), [("digits", 5), ("breast-cancer", 3)]
)
def test_iid_partitions_have_the_right_sizes_and_cover_the_train_split_once(
    dataset, num_partitions
):
    full = load_builtin(dataset, "train")
    config = data_config(dataset=dataset, partitioning="iid")

    nodes = [
        load_node_data(
            {"partition-id": i, "num-partitions": num_partitions},
            config,
            full.preprocessing,
        )
        for i in range(num_partitions)
    ]

    sizes = [len(n.train) + len(n.test) for n in nodes]
    assert sizes == split_sizes(len(full), num_partitions)
    everything = [d for n in nodes for d in (n.train, n.test)]
    np.testing.assert_array_equal(rows(everything), rows([full]))


def test_dirichlet_partitions_also_cover_the_train_split_once():
    full = load_builtin("digits", "train")
    config = data_config(partitioning="dirichlet", **{"dirichlet-alpha": 0.3})

    nodes = [
        load_node_data(
            {"partition-id": i, "num-partitions": 4}, config, full.preprocessing
        )
        for i in range(4)
    ]

    assert sum(len(n.train) + len(n.test) for n in nodes) == len(full)
    everything = [d for n in nodes for d in (n.train, n.test)]
    np.testing.assert_array_equal(rows(everything), rows([full]))


def test_each_node_keeps_a_small_disjoint_local_test_split():
    full = load_builtin("breast-cancer", "train")

    node = load_node_data(
        {"partition-id": 0, "num-partitions": 2},
        data_config(dataset="breast-cancer"),
        full.preprocessing,
    )

    total = len(node.train) + len(node.test)
    # Stratified rounding per class: within one example per class of 10%.
    assert abs(len(node.test) - LOCAL_TEST_FRACTION * total) <= 2
    train_rows = {r.tobytes() for r in node.train.x}
    assert not any(r.tobytes() in train_rows for r in node.test.x)


def test_same_node_config_gives_the_same_data():
    full = load_builtin("digits", "train")
    config = data_config()
    node_config = {"partition-id": 1, "num-partitions": 3}

    a = load_node_data(node_config, config, full.preprocessing)
    b = load_node_data(node_config, config, full.preprocessing)

    assert a.train.fingerprint() == b.train.fingerprint()
    assert a.test.fingerprint() == b.test.fingerprint()


@pytest.mark.parametrize("partition_id", [4, 5, -1])
def test_partition_id_out_of_range_is_refused(partition_id):
    full = load_builtin("digits", "train")

    with pytest.raises(
        DataError, match=rf"'partition-id' must be in \[0, 4\), got {partition_id}"
    ):
        load_node_data(
            {"partition-id": partition_id, "num-partitions": 4},
            data_config(),
            full.preprocessing,
        )


# ---------------------------------------------------------------- own files
@pytest.fixture
def federation(tmp_path):
    """The coordinator's reference file and the preprocessing fitted on it."""
    ref = tmp_path / "reference.csv"
    pd.DataFrame(
        {
            "age": [20, 30, 40],
            "colour": ["red", "blue", "red"],
            "label": ["sick", "well", "well"],
        }
    ).to_csv(ref, index=False)
    prep = fit_file(ref, label_column="label").preprocessing
    config = data_config(dataset="file", **{"eval-data-path": str(ref)})
    return config, prep


def test_data_path_csv_is_encoded_with_the_federations_preprocessing(
    tmp_path, federation
):
    config, prep = federation
    node_file = tmp_path / "node.csv"
    # Other column order and an extra column: neither matters.
    pd.DataFrame(
        {
            "label": ["well", "sick", "well", "sick", "well", "sick"],
            "note": ["a", "b", "c", "d", "e", "f"],
            "colour": ["blue", "red", "red", "blue", "blue", "red"],
            "age": [30, 50, 10, 40, 20, 35],
        }
    ).to_csv(node_file, index=False)

    node = load_node_data({"data-path": str(node_file)}, config, prep)

    # Standardised with the reference mean 30 and std, not the node's own;
    # one-hot (blue, red); classes (sick, well).
    expected_x = np.array(
        [
            [0 / AGE_STD, 1, 0],
            [20 / AGE_STD, 0, 1],
            [-20 / AGE_STD, 0, 1],
            [10 / AGE_STD, 1, 0],
            [-10 / AGE_STD, 1, 0],
            [5 / AGE_STD, 0, 1],
        ]
    )
    expected_y = np.array([1, 0, 1, 0, 1, 0])
    expected = np.column_stack([expected_x, expected_y])
    expected = expected[np.lexsort(expected.T[::-1])]
    np.testing.assert_allclose(rows([node.train, node.test]), expected, rtol=1e-6)
    assert len(node.test) >= 1
    assert node.train.preprocessing == prep


def test_data_path_file_not_matching_the_preprocessing_is_refused(tmp_path, federation):
    config, prep = federation
    node_file = tmp_path / "node.csv"
    pd.DataFrame({"age": [1, 2, 3], "label": ["sick", "well", "well"]}).to_csv(
        node_file, index=False
    )

    with pytest.raises(DataError, match="colour"):
        load_node_data({"data-path": str(node_file)}, config, prep)


def test_node_with_one_example_is_refused(tmp_path, federation):
    config, prep = federation
    node_file = tmp_path / "one.csv"
    node_file.write_text("age,colour,label\n30,red,well\n")

    with pytest.raises(
        DataError, match=r"holds 1 example\(s\); a node needs at least 2"
    ):
        load_node_data({"data-path": str(node_file)}, config, prep)


def test_missing_data_file_is_refused(tmp_path, federation):
    config, prep = federation

    with pytest.raises(DataError, match="data file not found"):
        load_node_data({"data-path": str(tmp_path / "absent.csv")}, config, prep)


# ---------------------------------------------------------------- no data named
@pytest.mark.parametrize(
    "node_config", [{}, {"partition-id": 0}, {"num-partitions": 2}, {"data-path": ""}]
)
def test_node_naming_no_data_gets_an_error_naming_both_options(node_config):
    full = load_builtin("digits", "train")

    with pytest.raises(DataError) as excinfo:
        load_node_data(node_config, data_config(), full.preprocessing)

    message = str(excinfo.value)
    assert "names no data" in message
    assert "'data-path'" in message
    assert "'partition-id' and 'num-partitions'" in message


def test_file_dataset_node_without_data_path_is_refused(federation):
    config, prep = federation

    with pytest.raises(
        DataError, match=r"dataset = 'file'.*no 'data-path' in its node config"
    ):
        load_node_data({"partition-id": 0, "num-partitions": 2}, config, prep)


# ---------------------------------------------------------------- virtual nodes' files
def test_virtual_node_reads_its_own_file_from_node_data_dir(tmp_path, federation):
    config, prep = federation
    config = data_config(
        dataset="file",
        **{"eval-data-path": config.eval_data_path, "node-data-dir": str(tmp_path)},
    )
    # Node 1's file holds ages 30 and 40 only; node 0's the other rows.
    pd.DataFrame(
        {"age": [20, 20], "colour": ["red"] * 2, "label": ["sick"] * 2}
    ).to_csv(tmp_path / "node-0.csv", index=False)
    pd.DataFrame(
        {"age": [30, 40], "colour": ["blue", "red"], "label": ["well", "sick"]}
    ).to_parquet(tmp_path / "node-1.parquet", index=False)

    node = load_node_data({"partition-id": 1, "num-partitions": 2}, config, prep)

    ages = np.sort(
        np.concatenate([node.train.x[:, 0], node.test.x[:, 0]]) * AGE_STD + 30
    )
    np.testing.assert_allclose(ages, [30, 40], atol=1e-4)
    assert sorted(np.concatenate([node.train.y, node.test.y])) == [0, 1]


def test_virtual_node_without_its_file_is_refused(tmp_path, federation):
    config, prep = federation
    config = data_config(
        dataset="file",
        **{"eval-data-path": config.eval_data_path, "node-data-dir": str(tmp_path)},
    )

    with pytest.raises(
        DataError,
        match=r"no data file for partition 3 in node-data-dir .*: expected node-3 "
        r"with one of \['.csv', '.parquet', '.npz'\]",
    ):
        load_node_data({"partition-id": 3, "num-partitions": 4}, config, prep)

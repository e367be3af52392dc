import numpy as np
import pandas as pd
import pytest

from fedge.shared.errors import DataError
from fedge.shared.partition import (
    PARTITIONINGS,
    partition_dirichlet,
    partition_iid,
    partition_indices,
    partition_shards,
    partition_stats,
)

SEEDS = [0, 1, 7, 42]
# 10 classes × 60 examples, labels interleaved so "sorted by index" != "by label".
LABELS = np.tile(np.arange(10), 60)


def assert_exact_cover(parts, n):
    """Every index in range(n) appears in exactly one partition; parts sorted."""
    assert sum(len(p) for p in parts) == n
    joined = np.concatenate(parts)
    assert np.array_equal(np.sort(joined), np.arange(n))
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scheme", PARTITIONINGS)
def test_every_example_in_exactly_one_partition(scheme, seed):
    parts = partition_indices(LABELS, 7, scheme, seed=seed, alpha=0.5)
    assert len(parts) == 7
    assert_exact_cover(parts, len(LABELS))
    assert min(len(p) for p in parts) >= 1


@pytest.mark.parametrize("scheme", PARTITIONINGS)
def test_same_seed_same_split_different_seed_different_split(scheme):
    a = partition_indices(LABELS, 5, scheme, seed=3)
    b = partition_indices(LABELS, 5, scheme, seed=3)
    c = partition_indices(LABELS, 5, scheme, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(
        len(x) == len(y) and np.array_equal(x, y) for x, y in zip(a, c, strict=True)
    )


def test_iid_sizes_differ_by_at_most_one():
    parts = partition_iid(103, 10, seed=0)
    sizes = sorted(len(p) for p in parts)
    assert sizes == [10] * 7 + [11] * 3


def test_iid_label_mix_is_close_to_global():
    # 600 examples, 6 parts of 100: each class (10%) should land near 10 per part.
    parts = partition_iid(len(LABELS), 6, seed=0)
    for p in parts:
        counts = np.bincount(LABELS[p], minlength=10)
        assert counts.min() >= 2 and counts.max() <= 20


def mean_max_class_share(labels, parts):
    shares = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]
    return float(np.mean(shares))


def test_dirichlet_skew_grows_as_alpha_falls():
    skewed = np.mean(
        [
            mean_max_class_share(
                LABELS, partition_dirichlet(LABELS, 10, alpha=0.1, seed=s)
            )
            for s in SEEDS
        ]
    )
    uniform = np.mean(
        [
            mean_max_class_share(
                LABELS, partition_dirichlet(LABELS, 10, alpha=100.0, seed=s)
            )
            for s in SEEDS
        ]
    )
    # Global share of any class is 0.1; Dir(100) stays close to it, Dir(0.1)
    # puts most of a client's data in one or two classes.
    assert uniform < 0.2
    assert skewed > 0.4
    assert skewed > uniform


def test_dirichlet_respects_min_partition_size():
    parts = partition_dirichlet(LABELS, 10, alpha=0.3, seed=0, min_partition_size=20)
    assert min(len(p) for p in parts) >= 20
    assert_exact_cover(parts, len(LABELS))


def test_dispatcher_passes_min_partition_size():
    parts = partition_indices(
        LABELS, 10, "dirichlet", seed=0, alpha=0.1, min_partition_size=15
    )
    assert min(len(p) for p in parts) >= 15


def test_dirichlet_gives_up_with_helpful_message():
    # 12 examples over 10 partitions at tiny alpha: some partition stays tiny.
    labels = np.array([0] * 6 + [1] * 6)
    with pytest.raises(DataError, match=r"larger alpha or fewer clients"):
        partition_dirichlet(
            labels, 10, alpha=0.01, seed=0, min_partition_size=1, max_retries=5
        )


def test_dirichlet_too_few_examples_for_min_size():
    with pytest.raises(DataError, match=r"cannot split 30 examples into 10 partitions"):
        partition_dirichlet(LABELS[:30], 10, alpha=1.0, seed=0, min_partition_size=4)


@pytest.mark.parametrize("seed", SEEDS)
def test_shards_give_each_client_at_most_shards_per_client_labels(seed):
    # 60 per class, 10 clients × 2 shards of 30: each shard holds one label.
    parts = partition_shards(LABELS, 10, shards_per_client=2, seed=seed)
    assert_exact_cover(parts, len(LABELS))
    for p in parts:
        assert len(p) == 60
        assert len(np.unique(LABELS[p])) <= 2


def test_shards_with_one_shard_per_client_gives_single_label_clients():
    parts = partition_shards(LABELS, 10, shards_per_client=1, seed=0)
    assert sorted(int(np.unique(LABELS[p])[0]) for p in parts) == list(range(10))
    assert all(len(np.unique(LABELS[p])) == 1 for p in parts)


@pytest.mark.parametrize("scheme", PARTITIONINGS)
def test_more_partitions_than_examples(scheme):
    with pytest.raises(
        DataError, match=r"cannot split 5 examples into 10 non-empty partitions"
    ):
        partition_indices(np.arange(5) % 2, 10, scheme, seed=0)


def test_more_shards_than_examples():
    with pytest.raises(DataError, match=r"cannot cut 8 examples into 10 non-empty"):
        partition_shards(np.arange(8) % 2, 5, shards_per_client=2, seed=0)


@pytest.mark.parametrize("num_partitions", [0, -1])
def test_num_partitions_must_be_positive(num_partitions):
    with pytest.raises(
        DataError, match=rf"num_partitions must be >= 1, got {num_partitions}"
    ):
        partition_iid(10, num_partitions, seed=0)


@pytest.mark.parametrize("alpha", [0.0, -0.5])
def test_alpha_must_be_positive(alpha):
    with pytest.raises(
        DataError, match=rf"alpha \(dirichlet-alpha\) must be > 0, got {alpha}"
    ):
        partition_dirichlet(LABELS, 3, alpha=alpha, seed=0)


def test_shards_per_client_must_be_positive():
    with pytest.raises(
        DataError, match=r"shards_per_client must be an int >= 1, got 0"
    ):
        partition_shards(LABELS, 3, shards_per_client=0, seed=0)


def test_unknown_scheme_lists_valid_ones():
    with pytest.raises(
        DataError, match=r"unknown partitioning 'pathological'.*iid.*dirichlet.*shards"
    ):
        partition_indices(LABELS, 3, "pathological", seed=0)


def test_labels_must_be_integer_class_indices():
    with pytest.raises(DataError, match=r"labels must be integer class indices"):
        partition_shards(np.array([0.5, 1.0, 2.0]), 1, shards_per_client=1, seed=0)


def test_partition_stats_counts_by_hand():
    labels = np.array([0, 1, 1, 2, 2, 2])
    parts = [np.array([0, 3]), np.array([1, 2, 4, 5])]
    stats = partition_stats(labels, parts, num_classes=4)
    expected = pd.DataFrame(
        {
            "partition-id": [0, 1],
            "num-examples": [2, 4],
            "label-0": [1, 0],
            "label-1": [0, 2],
            "label-2": [1, 2],
            "label-3": [0, 0],
        }
    )
    pd.testing.assert_frame_equal(stats, expected, check_dtype=False)


def test_partition_stats_rejects_labels_beyond_num_classes():
    with pytest.raises(DataError, match=r"labels must be < num_classes=2, got 2"):
        partition_stats(np.array([0, 1, 2]), [np.array([0, 1, 2])], num_classes=2)

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_digits, make_classification

from fedge.shared.datasets import (
    AEON_PROBLEMS,
    BUILTIN_DATASETS,
    Dataset,
    fit_file,
    load_builtin,
    load_file,
    read_table,
    split_train_test,
)
from fedge.shared.errors import DataError
from fedge.shared.partition import partition_indices

# The time series keep the archive's own split; tests/shared/test_series.py.
SKLEARN_BUILTINS = [n for n in BUILTIN_DATASETS if n not in AEON_PROBLEMS]

SQRT_2 = math.sqrt(2.0)


def good_frame():
    # age: mean 30, population std sqrt(200/3); colour one-hot (blue, red).
    return pd.DataFrame(
        {
            "age": [20, 30, 40],
            "colour": ["red", "blue", "red"],
            "label": ["sick", "well", "well"],
        }
    )


def write_csv(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- good files
def test_good_csv(tmp_path):
    path = tmp_path / "ref.csv"
    good_frame().to_csv(path, index=False)

    ds = fit_file(path, label_column="label")

    std = math.sqrt(200 / 3)
    expected = np.array(
        [[-10 / std, 0, 1], [0, 1, 0], [10 / std, 0, 1]], dtype=np.float32
    )
    np.testing.assert_allclose(ds.x, expected, rtol=1e-6)
    np.testing.assert_array_equal(ds.y, [0, 1, 1])
    assert ds.y.dtype == np.int64
    assert ds.preprocessing.class_names == ("sick", "well")
    assert ds.source == str(path)
    assert len(ds) == 3


def test_parquet_reads_like_csv(tmp_path):
    good_frame().to_csv(tmp_path / "ref.csv", index=False)
    good_frame().to_parquet(tmp_path / "ref.parquet")

    from_csv = fit_file(tmp_path / "ref.csv", label_column="label")
    from_parquet = fit_file(tmp_path / "ref.parquet", label_column="label")

    np.testing.assert_array_equal(from_parquet.x, from_csv.x)
    np.testing.assert_array_equal(from_parquet.y, from_csv.y)


def test_node_file_encoded_with_reference_preprocessing(tmp_path):
    good_frame().to_csv(tmp_path / "ref.csv", index=False)
    ref = fit_file(tmp_path / "ref.csv", label_column="label")
    # Columns reordered, an extra column, a label subset.
    write_csv(tmp_path, "id,label,colour,age\n7,well,blue,30\n8,sick,red,20\n", "n.csv")

    node = load_file(tmp_path / "n.csv", ref.preprocessing)

    np.testing.assert_allclose(node.x, ref.x[[1, 0]])
    np.testing.assert_array_equal(node.y, [1, 0])


def test_npz_tabular(tmp_path):
    x = np.array([[1.0, 10.0], [3.0, 10.0]])
    np.savez(tmp_path / "t.npz", x=x, y=np.array([1, 0]))

    ds = fit_file(tmp_path / "t.npz", label_column="label")

    assert ds.preprocessing.kind == "tabular"
    assert ds.preprocessing.feature_columns == ("x0", "x1")
    np.testing.assert_allclose(ds.x, [[-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_array_equal(ds.y, [1, 0])


def test_read_table_npz_layout(tmp_path):
    np.savez(tmp_path / "t.npz", x=np.zeros((2, 3)), y=np.array([1, 0]))
    frame = read_table(tmp_path / "t.npz")
    assert list(frame.columns) == ["x0", "x1", "x2", "label"]


@pytest.mark.parametrize("label_column", ["label", "target"])
def test_npz_grey_images_with_a_channel_axis(tmp_path, label_column):
    # 3-D x is (n, channels, steps) time series: images carry a channel axis.
    x = np.zeros((4, 1, 3, 2), dtype=np.uint8)
    x[0, 0, 0, 0] = 200
    x[1, 0, 2, 1] = 50
    np.savez(tmp_path / "i.npz", x=x, y=np.array([0, 1, 0, 1]))

    ds = fit_file(tmp_path / "i.npz", label_column=label_column)

    prep = ds.preprocessing
    assert prep.kind == "image"
    assert prep.image_shape == (1, 3, 2)
    assert prep.pixel_scale == 200.0
    assert ds.x.shape == (4, 1, 3, 2)
    assert ds.x[0, 0, 0, 0] == 1.0
    assert ds.x[1, 0, 2, 1] == pytest.approx(0.25)
    assert ds.x.sum() == pytest.approx(1.25)


def test_npz_images_chw_and_node_file(tmp_path):
    rng = np.random.default_rng(0)
    ref_x = rng.uniform(-2, 2, size=(6, 3, 4, 4))
    ref_x[0, 0, 0, 0] = -8.0  # max |x| = 8
    np.savez(tmp_path / "ref.npz", x=ref_x, y=np.arange(6) % 3)
    node_x = rng.uniform(-2, 2, size=(2, 3, 4, 4))
    np.savez(tmp_path / "node.npz", x=node_x, y=np.array([2, 0]))

    ref = fit_file(tmp_path / "ref.npz", label_column="label")
    node = load_file(tmp_path / "node.npz", ref.preprocessing)

    assert ref.preprocessing.image_shape == (3, 4, 4)
    assert ref.preprocessing.pixel_scale == 8.0
    np.testing.assert_allclose(node.x, node_x / 8.0, rtol=1e-6)
    np.testing.assert_array_equal(node.y, [2, 0])


def test_npz_image_of_wrong_size_for_reference(tmp_path):
    np.savez(tmp_path / "ref.npz", x=np.ones((2, 1, 8, 8)), y=np.array([0, 1]))
    np.savez(tmp_path / "node.npz", x=np.ones((2, 1, 7, 7)), y=np.array([0, 1]))
    ref = fit_file(tmp_path / "ref.npz", label_column="label")
    with pytest.raises(
        DataError, match=r"expected images of shape \(1, 8, 8\) or 64 values per row"
    ):
        load_file(tmp_path / "node.npz", ref.preprocessing)


# ---------------------------------------------------------------- bad files
def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"data file not found: .*nope\.csv"):
        read_table(tmp_path / "nope.csv")


def test_unsupported_suffix(tmp_path):
    path = write_csv(tmp_path, "a,b\n1,2\n", "data.xlsx")
    with pytest.raises(
        DataError, match=r"unsupported data file type '\.xlsx'.*\.csv.*\.parquet.*\.npz"
    ):
        read_table(path)


RAGGED = "a,b\n1,2\n3,4,5,6\n"


def test_ragged_csv_is_rejected_by_pandas_itself(tmp_path):
    # Guard for the fixture: pandas must really reject it.
    path = write_csv(tmp_path, RAGGED)
    with pytest.raises(pd.errors.ParserError):
        pd.read_csv(path)


def test_malformed_csv_names_file_and_reason(tmp_path):
    path = write_csv(tmp_path, RAGGED)
    with pytest.raises(
        DataError, match=r"cannot read CSV file .*data\.csv: .*Expected 2 fields"
    ) as info:
        read_table(path)
    assert isinstance(info.value.__cause__, pd.errors.ParserError)


def test_non_utf8_csv(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"name,label\n\xe9\xe8\xff,1\n")
    with pytest.raises((pd.errors.ParserError, UnicodeDecodeError)):
        pd.read_csv(path)  # guard: pandas rejects it
    with pytest.raises(DataError, match=r"cannot read CSV file .*latin\.csv"):
        read_table(path)


def test_empty_csv(tmp_path):
    path = write_csv(tmp_path, "")
    with pytest.raises(
        DataError, match=r"cannot read CSV file .*data\.csv: file is empty"
    ):
        read_table(path)


def test_header_only_csv(tmp_path):
    path = write_csv(tmp_path, "age,label\n")
    with pytest.raises(DataError, match=r"data\.csv has no data rows"):
        fit_file(path, label_column="label")


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match=r"cannot read Parquet file .*bad\.parquet"):
        read_table(path)


def test_label_column_missing_in_file(tmp_path):
    path = write_csv(tmp_path, "age,colour\n1,red\n2,blue\n")
    with pytest.raises(
        DataError,
        match=r"label column 'label' not found in .*data\.csv; "
        r"columns found: \['age', 'colour'\]",
    ):
        fit_file(path, label_column="label")


def test_label_column_missing_in_node_file(tmp_path):
    good_frame().to_csv(tmp_path / "ref.csv", index=False)
    ref = fit_file(tmp_path / "ref.csv", label_column="label")
    path = write_csv(tmp_path, "age,colour\n1,red\n", "n.csv")
    with pytest.raises(DataError, match=r"label column 'label' not found in .*n\.csv"):
        load_file(path, ref.preprocessing)


def test_non_numeric_value_in_numeric_column(tmp_path):
    rows = [f"{20 + i},{i % 2}" for i in range(20)]
    rows[16] = "abc,0"  # data row 17 (file line 18)
    path = write_csv(tmp_path, "age,label\n" + "\n".join(rows) + "\n", "x.csv")
    with pytest.raises(
        DataError,
        match=r"non-numeric value 'abc' in numeric column 'age' "
        r"\(file .*x\.csv, data row 17",
    ):
        fit_file(path, label_column="label")


def test_missing_values_rejected_then_imputed(tmp_path):
    path = write_csv(tmp_path, "age,colour,label\n20,red,0\n,blue,1\n40,,0\n")
    with pytest.raises(
        DataError, match=r"missing value in column 'age' \(file .*data\.csv, data row 2"
    ):
        fit_file(path, label_column="label")

    ds = fit_file(path, label_column="label", impute="mean")

    # age filled with mean(20, 40) = 30 -> 0; colour filled with mode.
    # Tie between blue and red: the first in sorted order (blue) wins.
    assert ds.preprocessing.fill_values == {"age": 30.0, "colour": "blue"}
    np.testing.assert_allclose(ds.x[:, 0], [-1.0, 0.0, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(ds.x[2, 1:], [1.0, 0.0])


def test_unknown_label_in_node_file(tmp_path):
    good_frame().to_csv(tmp_path / "ref.csv", index=False)
    ref = fit_file(tmp_path / "ref.csv", label_column="label")
    path = write_csv(tmp_path, "age,colour,label\n1,red,dead\n", "n.csv")
    with pytest.raises(
        DataError, match=r"unknown label 'dead'.*n\.csv.*\['sick', 'well'\]"
    ):
        load_file(path, ref.preprocessing)


def test_npz_without_x_and_y(tmp_path):
    np.savez(tmp_path / "bad.npz", features=np.zeros((2, 2)), y=np.zeros(2))
    with pytest.raises(
        DataError,
        match=r"must contain arrays 'x' and 'y'; arrays found: \['features', 'y'\]",
    ):
        read_table(tmp_path / "bad.npz")


def test_npz_length_mismatch(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 2)), y=np.zeros(2))
    with pytest.raises(DataError, match=r"'x' has 3 rows but 'y' has 2"):
        read_table(tmp_path / "bad.npz")


def test_npz_not_a_zip(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"cannot read \.npz file .*bad\.npz"):
        read_table(path)


# ---------------------------------------------------------------- built-ins
def test_unknown_builtin_lists_valid_names():
    with pytest.raises(
        DataError,
        match=r"unknown built-in dataset 'mnist'; valid names: "
        r"\['digits', 'breast-cancer', 'synthetic', 'basic-motions', "
        r"'pickup-gesture'\]",
    ):
        load_builtin("mnist", "train")


def test_unknown_split():
    with pytest.raises(DataError, match=r"split must be one of .* got 'val'"):
        load_builtin("digits", "val")


def test_digits_shapes_and_classes():
    train = load_builtin("digits", "train")
    test = load_builtin("digits", "test")

    assert len(train) + len(test) == 1797
    assert train.x.shape[1:] == (1, 8, 8) and test.x.shape[1:] == (1, 8, 8)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64
    assert train.preprocessing.class_names == tuple(str(i) for i in range(10))
    assert train.preprocessing.pixel_scale == 16.0
    assert train.x.min() >= 0.0 and train.x.max() == 1.0
    assert set(np.unique(test.y)) == set(range(10))
    assert train.source == "digits[train]"


def sorted_rows(x, y):
    rows = np.column_stack([x.reshape(len(x), -1), y])
    return rows[np.lexsort(rows.T[::-1])]


@pytest.mark.parametrize("name", SKLEARN_BUILTINS)
def test_builtin_train_and_test_partition_the_original(name):
    """Train ∪ test is exactly sklearn's data (as a multiset): disjoint, complete."""
    train = load_builtin(name, "train")
    test = load_builtin(name, "test")
    if name == "digits":
        bunch = load_digits()
        raw = np.concatenate([train.x, test.x]).reshape(-1, 64) * 16.0
    else:
        if name == "synthetic":
            data, target = make_classification(
                n_samples=32_000,
                n_features=20,
                n_informative=10,
                n_classes=4,
                random_state=0,
            )
            bunch = SimpleNamespace(data=data, target=target)
        else:
            bunch = load_breast_cancer()
        p = train.preprocessing
        raw = np.concatenate([train.x, test.x]) * np.array(p.scales) + np.array(p.means)
    y = np.concatenate([train.y, test.y])
    if name == "synthetic":
        # 32,000 continuous rows: float32 rounding reorders near-tied rows, so
        # compare each column and the labels as multisets instead.
        np.testing.assert_allclose(
            np.sort(raw, axis=0), np.sort(bunch.data, axis=0), atol=1e-3
        )
        assert np.bincount(y).tolist() == np.bincount(bunch.target).tolist()
        return
    np.testing.assert_allclose(
        sorted_rows(raw, y), sorted_rows(bunch.data, bunch.target), atol=1e-3
    )


@pytest.mark.parametrize("name", SKLEARN_BUILTINS)
def test_builtin_split_is_75_25_stratified(name):
    train = load_builtin(name, "train")
    test = load_builtin(name, "test")
    n = len(train) + len(test)
    assert abs(len(test) - 0.25 * n) <= 10
    totals = np.bincount(np.concatenate([train.y, test.y]))
    test_counts = np.bincount(test.y, minlength=len(totals))
    np.testing.assert_allclose(test_counts, 0.25 * totals, atol=1)


@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_builtin_is_deterministic_and_copies_are_private(name):
    first = load_builtin(name, "train")
    fingerprint = first.fingerprint()
    first.x[:] = 0  # callers get writable copies; the cache must not change
    second = load_builtin(name, "train")
    assert second.fingerprint() == fingerprint
    assert second.x.any()


def test_breast_cancer_features_and_train_standardisation():
    train = load_builtin("breast-cancer", "train")
    test = load_builtin("breast-cancer", "test")

    prep = train.preprocessing
    assert prep.kind == "tabular"
    assert prep.feature_columns == tuple(load_breast_cancer().feature_names)
    assert prep.class_names == ("malignant", "benign")
    assert train.x.shape[1:] == (30,) and len(train) + len(test) == 569
    # Train-split statistics: train is exactly standardised, test only roughly.
    np.testing.assert_allclose(train.x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train.x.std(axis=0), 1.0, atol=1e-4)
    assert np.bincount(np.concatenate([train.y, test.y])).tolist() == [212, 357]


def test_synthetic_gives_each_of_1000_iid_clients_24_examples():
    train = load_builtin("synthetic", "train")
    test = load_builtin("synthetic", "test")

    assert (len(train), len(test)) == (24_000, 8_000)
    assert train.x.shape[1:] == (20,)
    assert train.preprocessing.class_names == ("0", "1", "2", "3")
    # make_classification balances its classes (8,000 each, 6,000 in train),
    # then relabels 1 % at random (flip_y = 0.01).
    assert all(abs(n - 6_000) <= 60 for n in np.bincount(train.y))
    parts = partition_indices(train.y, 1000, "iid", seed=42)
    assert {len(p) for p in parts} == {24}
    np.testing.assert_allclose(train.x.mean(axis=0), 0.0, atol=1e-5)


# ---------------------------------------------------------------- Dataset
def tiny_dataset(labels):
    ds = load_builtin("digits", "test")
    return Dataset(ds.x[: len(labels)], np.asarray(labels), ds.preprocessing, "tiny")


def test_subset_and_fingerprint():
    ds = tiny_dataset([0, 1, 2, 3])
    sub = ds.subset(np.array([2, 0]))
    np.testing.assert_array_equal(sub.y, [2, 0])
    np.testing.assert_array_equal(sub.x, ds.x[[2, 0]])
    assert len(ds.fingerprint()) == 16
    assert tiny_dataset([0, 1, 2, 3]).fingerprint() == ds.fingerprint()
    assert tiny_dataset([0, 1, 2, 4]).fingerprint() != ds.fingerprint()
    with pytest.raises(DataError, match=r"subset indices must lie in \[0, 4\)"):
        ds.subset(np.array([4]))


def test_dataset_rejects_mismatched_lengths():
    ds = load_builtin("digits", "test")
    with pytest.raises(DataError, match=r"bad: 3 examples but 2 labels"):
        Dataset(ds.x[:3], ds.y[:2], ds.preprocessing, "bad")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_train_test_stratified_disjoint_and_seeded(seed):
    labels = np.array([0] * 10 + [1] * 5 + [2] * 2)
    # Each example's pixels hold its own id, so ids survive the split.
    ids = np.broadcast_to(
        np.arange(17, dtype=np.float32)[:, None, None, None], (17, 1, 8, 8)
    )
    ds = Dataset(ids.copy(), labels, tiny_dataset([0]).preprocessing, "ids")

    train, test = split_train_test(ds, test_fraction=0.2, seed=seed)
    again, _ = split_train_test(ds, test_fraction=0.2, seed=seed)

    train_ids = set(train.x[:, 0, 0, 0].astype(int))
    test_ids = set(test.x[:, 0, 0, 0].astype(int))
    assert train_ids.isdisjoint(test_ids)
    assert train_ids | test_ids == set(range(17))
    # Per class: round(10*.2)=2, round(5*.2)=1, round(2*.2)=0 -> at least 1.
    assert np.bincount(test.y, minlength=3).tolist() == [2, 1, 1]
    assert np.bincount(train.y, minlength=3).tolist() == [8, 4, 1]
    np.testing.assert_array_equal(again.x, train.x)


def test_split_train_test_falls_back_when_a_class_is_singleton():
    labels = np.array([0] * 9 + [1])
    ds = tiny_dataset(labels)
    train, test = split_train_test(ds, test_fraction=0.2, seed=0)
    assert len(train) == 8 and len(test) == 2


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5])
def test_split_train_test_bad_fraction(fraction):
    with pytest.raises(
        DataError, match=rf"test_fraction must be in \(0, 1\), got {fraction}"
    ):
        split_train_test(tiny_dataset([0, 1, 0, 1]), test_fraction=fraction)


def test_the_digits_are_read_exactly_as_scikit_learn_loads_them():
    from fedge.shared.datasets import _digits_table

    features, target = _digits_table()
    bunch = load_digits()

    assert np.array_equal(features, bunch.data) and features.dtype == bunch.data.dtype
    assert np.array_equal(target, bunch.target)
    assert sorted(set(target.tolist())) == list(bunch.target_names)


def test_loading_the_digits_imports_no_scikit_learn():
    import subprocess
    import sys

    # A fresh interpreter: this one imported scikit-learn for the test above.
    code = (
        "import sys\n"
        "from fedge.shared.datasets import load_builtin\n"
        "train = load_builtin('digits', 'train')\n"
        "assert len(train.y) > 1000, len(train.y)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"

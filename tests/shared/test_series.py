"""Time series: the built-in aeon sets, .npz series files, and their encoding."""

import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from fedge.edge_export.runtime import transform_features as device_transform
from fedge.shared import datasets
from fedge.shared.datasets import fit_file, load_builtin, load_file, read_table
from fedge.shared.errors import DataError
from fedge.shared.preprocessing import Preprocessing, fit_series


# ---------------------------------------------------------------- encoding
def test_fit_series_standardises_each_channel_over_recorded_steps_only():
    # Channel 0 holds 1, 2, 3 and 5..9: mean 41/8; padding NaNs are not data.
    short = np.array([[1.0, 2, 3, np.nan, np.nan], [0, 0, 0, np.nan, np.nan]])
    full = np.array([[5.0, 6, 7, 8, 9], [1, 1, 1, 1, 1]])
    prep = fit_series(
        np.stack([short, full]), class_names=("a", "b"), label_column="y", source="t"
    )
    values0 = np.array([1, 2, 3, 5, 6, 7, 8, 9.0])
    values1 = np.array([0, 0, 0, 1, 1, 1, 1, 1.0])
    assert prep.series_shape == (2, 5)
    assert prep.channel_means == pytest.approx((41 / 8, 5 / 8))
    assert prep.channel_scales == pytest.approx((values0.std(), values1.std()))
    encoded = prep.transform_features([short[:, :3], full])
    expected_short = (short[:, :3] - values0.mean()) / values0.std()
    expected_short[1] = (0 - 5 / 8) / values1.std()
    np.testing.assert_allclose(encoded[0, :, :3], expected_short, rtol=1e-6)
    assert not encoded[0, :, 3:].any()  # padded at the end with the mean (0)


def test_longer_series_are_cut_and_shorter_ones_padded_to_the_fitted_length():
    prep = Preprocessing(
        kind="series",
        label_column="y",
        class_names=("a", "b"),
        series_shape=(1, 3),
        channel_means=(1.0,),
        channel_scales=(2.0,),
    )
    encoded = prep.transform_features(
        [np.array([[1.0, 3, 5, 7, 9]]), np.array([[3.0]])]
    )
    np.testing.assert_array_equal(encoded[:, 0], [[0, 1, 2], [1, 0, 0]])


def test_a_constant_channel_gets_scale_one():
    prep = fit_series(
        np.full((2, 1, 4), 3.0), class_names=("a", "b"), label_column="y", source="t"
    )
    assert prep.channel_scales == (1.0,)


def series_prep(channels=2, steps=4):
    return Preprocessing(
        kind="series",
        label_column="y",
        class_names=("a", "b"),
        series_shape=(channels, steps),
        channel_means=(0.0,) * channels,
        channel_scales=(1.0,) * channels,
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            np.zeros((2, 3, 4)),
            r"expected time series of shape \(n, 2, steps\), got an array of shape "
            r"\(2, 3, 4\)",
        ),
        (
            [np.zeros((2, 4)), np.zeros((3, 4))],
            r"series 2 has 3 channels, series 1 has 2",
        ),
        ([np.zeros(4)], r"series 1 has shape \(4,\); expected \(channels, steps\)"),
        (
            np.array([[[1.0, np.nan, 2.0], [1.0, np.nan, 2.0]]]),
            r"missing or non-finite value in series 1 at step 2",
        ),
        (np.full((1, 2, 3), np.nan), r"series 1 has no recorded step"),
        (np.array([[["a"], ["b"]]]), r"values must be numeric, got dtype <U1"),
    ],
)
def test_bad_series_are_refused_saying_where(data, message):
    with pytest.raises(DataError, match=message):
        series_prep().transform_features(data, source="f.npz")


def test_bad_series_preprocessing_says_what_is_wrong():
    with pytest.raises(DataError, match=r"series_shape must be \(channels, steps\)"):
        Preprocessing(kind="series", label_column="y", class_names=("a",))
    with pytest.raises(DataError, match=r"need one entry per channel \(2\)"):
        Preprocessing(
            kind="series",
            label_column="y",
            class_names=("a",),
            series_shape=(2, 5),
            channel_means=(0.0,),
            channel_scales=(1.0,),
        )


def test_series_preprocessing_round_trips_and_the_device_encodes_identically():
    rng = np.random.default_rng(0)
    reference = [rng.normal(3, 2, size=(2, n)) for n in (5, 9, 7)]
    prep = fit_series(reference, class_names=("a", "b"), label_column="y", source="t")
    again = Preprocessing.from_json(prep.to_json())
    assert again == prep
    new = [rng.normal(size=(2, n)) for n in (4, 12)]
    np.testing.assert_array_equal(
        device_transform(prep.to_dict(), new), prep.transform_features(new)
    )


def test_tables_and_images_keep_their_metadata_without_series_keys():
    d = series_prep().to_dict()
    assert {"series_shape", "channel_means", "channel_scales"} <= set(d)
    image = Preprocessing(
        kind="image", label_column="y", class_names=("a",), image_shape=(1, 2, 2)
    )
    assert "series_shape" not in image.to_dict()


# ---------------------------------------------------------------- .npz files
def test_npz_with_3d_x_is_a_set_of_time_series(tmp_path):
    # Two reference series, the first 2 steps long (NaN-padded), the second 3.
    x = np.array([[[1.0, 3.0, np.nan]], [[5.0, 7.0, 9.0]]])
    np.savez(tmp_path / "ref.npz", x=x, y=np.array(["walk", "run"]))
    np.savez(tmp_path / "node.npz", x=np.array([[[5.0, 5, 5, 5, 5]]]), y=["run"])

    ref = fit_file(tmp_path / "ref.npz", label_column="label")
    node = load_file(tmp_path / "node.npz", ref.preprocessing)

    prep = ref.preprocessing
    assert (prep.kind, prep.series_shape, prep.class_names) == (
        "series",
        (1, 3),
        ("run", "walk"),
    )
    assert prep.channel_means == pytest.approx((5.0,))  # (1+3+5+7+9)/5
    scale = np.std([1.0, 3, 5, 7, 9])
    np.testing.assert_allclose(ref.x[0, 0], [-4 / scale, -2 / scale, 0], rtol=1e-6)
    np.testing.assert_array_equal(node.x, np.zeros((1, 1, 3)))  # cut to 3 steps
    assert node.y.tolist() == [0]
    assert read_table(tmp_path / "ref.npz").shape == (2, 4)  # 3 steps + label


# ---------------------------------------------------------------- built-ins
def aeon_file(problem, split):
    import aeon.datasets

    folder = Path(aeon.datasets.__file__).parent / "data" / problem
    return folder / f"{problem}_{split}.ts"


def test_basic_motions_is_aeons_bundled_set_standardised_with_train_statistics():
    from aeon.datasets import load_basic_motions

    raw_train, labels_train = load_basic_motions(split="train")
    raw_test, _ = load_basic_motions(split="test")
    train = load_builtin("basic-motions", "train")
    test = load_builtin("basic-motions", "test")

    assert train.x.shape == test.x.shape == (40, 6, 100)
    assert train.preprocessing.class_names == (
        "badminton",
        "running",
        "standing",
        "walking",
    )
    assert np.bincount(train.y).tolist() == [10, 10, 10, 10]
    names = np.array(train.preprocessing.class_names)
    assert (names[train.y] == labels_train).all()
    mean = raw_train.mean(axis=(0, 2))[None, :, None]
    std = raw_train.std(axis=(0, 2))[None, :, None]
    np.testing.assert_allclose(train.x, (raw_train - mean) / std, atol=1e-5)
    np.testing.assert_allclose(test.x, (raw_test - mean) / std, atol=1e-5)


def test_pickup_gesture_pads_variable_length_series_to_the_longest_training_one():
    from aeon.datasets import load_from_ts_file

    raw, _ = load_from_ts_file(str(aeon_file("PickupGestureWiimoteZ", "TRAIN")))
    lengths = [s.shape[1] for s in raw]
    train = load_builtin("pickup-gesture", "train")

    assert min(lengths) < max(lengths)  # truly variable length
    assert train.x.shape == (50, 1, max(lengths))
    assert len(train.preprocessing.class_names) == 10
    shortest = int(np.argmin(lengths))
    assert not train.x[shortest, 0, lengths[shortest] :].any()
    assert train.x[shortest, 0, : lengths[shortest]].any()


def test_builtin_series_are_read_from_the_installed_wheel_without_network(
    monkeypatch,
):
    for problem in datasets.AEON_PROBLEMS.values():
        for split in ("TRAIN", "TEST"):
            assert aeon_file(problem, split).is_file()

    def no_network(*args, **kwargs):
        raise AssertionError("a built-in dataset tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    datasets._builtin.cache_clear()
    try:
        assert len(load_builtin("basic-motions", "test")) == 40
        assert len(load_builtin("pickup-gesture", "test")) == 50
    finally:
        datasets._builtin.cache_clear()


def test_missing_aeon_gives_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "aeon.datasets", None)  # import fails
    datasets._builtin.cache_clear()
    try:
        with pytest.raises(
            DataError,
            match=r"built-in time series need aeon, which is not installed.*"
            r"make setup.*fedge\[series\].*--no-deps aeon==1\.6\.0",
        ):
            load_builtin("basic-motions", "train")
    finally:
        datasets._builtin.cache_clear()

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest

from fedge.shared.errors import DataError
from fedge.shared.preprocessing import (
    IMAGE_SHAPE_ATTR,
    Preprocessing,
    fit_preprocessing,
)

SQRT_2_3 = math.sqrt(2 / 3)  # population std of [1, 2, 3]


def three_rows():
    return pd.DataFrame(
        {
            "age": [1.0, 2.0, 3.0],
            "city": ["b", "a", "b"],
            "label": ["yes", "no", "yes"],
        }
    )


def image_prep(shape=(1, 8, 8), scale=16.0):
    return Preprocessing(
        kind="image",
        label_column="label",
        class_names=("0", "1"),
        image_shape=shape,
        pixel_scale=scale,
    )


# ---------------------------------------------------------------- fitting
def test_fit_and_transform_match_hand_computed_values():
    prep = fit_preprocessing(three_rows(), label_column="label")

    x = prep.transform_features(three_rows())

    # age: mean 2, population std sqrt(2/3); city one-hot in order (a, b).
    expected = np.array(
        [
            [-1 / SQRT_2_3, 0.0, 1.0],
            [0.0, 1.0, 0.0],
            [1 / SQRT_2_3, 0.0, 1.0],
        ],
        dtype=np.float32,
    )
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, expected, rtol=1e-6)
    assert prep.kind == "tabular"
    assert prep.feature_columns == ("age", "city")
    assert prep.numeric_columns == ("age",)
    assert prep.means == (2.0,)
    assert prep.scales == pytest.approx((SQRT_2_3,))
    assert prep.categories == {"city": ("a", "b")}
    assert prep.class_names == ("no", "yes")
    assert prep.input_shape == (3,)
    assert prep.num_classes == 2


def test_constant_column_gets_scale_one():
    frame = pd.DataFrame({"c": [5.0, 5.0], "label": [0, 1]})
    prep = fit_preprocessing(frame, label_column="label")
    assert prep.scales == (1.0,)
    np.testing.assert_array_equal(prep.transform_features(frame), [[0.0], [0.0]])


def test_bool_column_is_categorical():
    frame = pd.DataFrame({"flag": [True, False, True], "label": [0, 1, 0]})
    prep = fit_preprocessing(frame, label_column="label")
    assert prep.categories == {"flag": ("False", "True")}
    np.testing.assert_array_equal(
        prep.transform_features(frame), [[0, 1], [1, 0], [0, 1]]
    )


def test_numeric_labels_are_ordered_numerically():
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "label": [10, 2, 1]})
    prep = fit_preprocessing(frame, label_column="label")
    assert prep.class_names == ("1", "2", "10")
    np.testing.assert_array_equal(prep.encode_labels(frame["label"]), [2, 1, 0])


def test_missing_label_column_names_source_column_and_found_columns():
    frame = three_rows().drop(columns=["label"])
    with pytest.raises(
        DataError,
        match=r"label column 'target' not found in x\.csv; "
        r"columns found: \['age', 'city'\]",
    ):
        fit_preprocessing(frame, label_column="target", source="x.csv")


def test_non_numeric_value_in_mostly_numeric_column_names_column_and_row():
    ages = [str(i) for i in range(20)]
    ages[16] = "abc"  # 0-based position 16 = data row 17
    frame = pd.DataFrame({"age": ages, "label": [0, 1] * 10})
    with pytest.raises(
        DataError,
        match=r"non-numeric value 'abc' in numeric column 'age' "
        r"\(file x\.csv, data row 17, 1-based, header excluded",
    ):
        fit_preprocessing(frame, label_column="label", source="x.csv")


def test_object_column_of_number_strings_is_numeric():
    frame = pd.DataFrame({"age": ["1", "2", "3"], "label": [0, 1, 0]})
    prep = fit_preprocessing(frame, label_column="label")
    assert prep.numeric_columns == ("age",)
    assert prep.means == (2.0,)


def test_mostly_text_column_is_categorical():
    frame = pd.DataFrame({"size": ["small", "large", "1"], "label": [0, 1, 0]})
    prep = fit_preprocessing(frame, label_column="label")
    assert prep.categories == {"size": ("1", "large", "small")}


def test_missing_value_rejected_without_imputation():
    frame = three_rows()
    frame.loc[1, "city"] = None
    with pytest.raises(
        DataError, match=r"missing value in column 'city' \(file f\.csv, data row 2"
    ):
        fit_preprocessing(frame, label_column="label", source="f.csv")


def test_missing_values_imputed_with_mean_and_mode():
    frame = pd.DataFrame(
        {
            "age": [1.0, np.nan, 5.0, 6.0],
            "city": ["a", "b", "b", None],
            "label": [0, 1, 0, 1],
        }
    )
    prep = fit_preprocessing(frame, label_column="label", impute="mean")

    x = prep.transform_features(frame)

    # age mean over present values: (1 + 5 + 6) / 3 = 4; city mode "b".
    assert prep.fill_values == {"age": 4.0, "city": "b"}
    std = np.std([1.0, 5.0, 6.0])
    np.testing.assert_allclose(x[1, 0], 0.0, atol=1e-7)
    np.testing.assert_allclose(x[0, 0], (1 - 4) / std, rtol=1e-6)
    np.testing.assert_array_equal(x[3, 1:], [0, 1])


def test_entirely_empty_column_is_rejected():
    frame = three_rows()
    frame["notes"] = np.nan
    with pytest.raises(DataError, match=r"column 'notes' in d\.csv is entirely empty"):
        fit_preprocessing(frame, label_column="label", impute="mean", source="d.csv")


def test_missing_label_is_rejected_even_with_imputation():
    frame = three_rows()
    frame.loc[2, "label"] = None
    with pytest.raises(DataError, match=r"missing label in column 'label'.*data row 3"):
        fit_preprocessing(frame, label_column="label", impute="mean")


def test_single_class_is_rejected():
    frame = pd.DataFrame({"a": [1.0, 2.0], "label": ["x", "x"]})
    with pytest.raises(DataError, match=r"only one class"):
        fit_preprocessing(frame, label_column="label")


def test_bad_impute_mode():
    with pytest.raises(DataError, match=r"impute must be one of .* got 'median'"):
        fit_preprocessing(three_rows(), label_column="label", impute="median")


def test_image_frame_fits_image_preprocessing():
    pixels = np.array([[0.0, 1.0, -4.0, 2.0], [3.0, 0.0, 0.0, 1.0]])
    frame = pd.DataFrame(pixels, columns=["x0", "x1", "x2", "x3"])
    frame["label"] = [0, 1]
    frame.attrs[IMAGE_SHAPE_ATTR] = (1, 2, 2)

    prep = fit_preprocessing(frame, label_column="label")

    assert prep.kind == "image"
    assert prep.image_shape == (1, 2, 2)
    assert prep.pixel_scale == 4.0  # max |x|
    np.testing.assert_allclose(
        prep.transform_features(frame), (pixels / 4.0).reshape(2, 1, 2, 2)
    )


# ---------------------------------------------------------------- transform
def test_transform_selects_columns_by_name_and_ignores_extras():
    prep = fit_preprocessing(three_rows(), label_column="label")
    shuffled = three_rows()[["label", "city", "age"]].assign(extra=[9, 9, 9])
    np.testing.assert_array_equal(
        prep.transform_features(shuffled), prep.transform_features(three_rows())
    )


def test_missing_feature_columns_are_listed():
    prep = fit_preprocessing(three_rows(), label_column="label")
    with pytest.raises(
        DataError,
        match=r"node\.csv is missing feature column\(s\) \['city'\]; "
        r"expected \['age', 'city'\]",
    ):
        prep.transform_features(three_rows().drop(columns=["city"]), source="node.csv")


def test_unknown_category_encodes_as_zeros_and_warns(caplog):
    prep = fit_preprocessing(three_rows(), label_column="label")
    new = pd.DataFrame({"age": [2.0, 2.0], "city": ["zürich", "zürich"]})

    with caplog.at_level(logging.WARNING, logger="fedge.shared.preprocessing"):
        x = prep.transform_features(new)

    np.testing.assert_array_equal(x[:, 1:], np.zeros((2, 2)))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1  # once per column, not per row
    assert "'zürich'" in messages[0] and "'city'" in messages[0]


def test_integer_like_categories_match_across_dtypes():
    # A category column read as str in the reference but as float in a node's file.
    ref = pd.DataFrame({"code": ["1", "2", "x"], "label": [0, 1, 0]})
    prep = fit_preprocessing(ref, label_column="label")
    node = pd.DataFrame({"code": [2.0, 1.0]})
    np.testing.assert_array_equal(prep.transform_features(node), [[0, 1, 0], [1, 0, 0]])


def test_non_numeric_value_at_transform_names_column_and_row():
    prep = fit_preprocessing(three_rows(), label_column="label")
    bad = pd.DataFrame({"age": ["1", "two"], "city": ["a", "a"]})
    with pytest.raises(
        DataError,
        match=r"non-numeric value 'two' in numeric column 'age' \(n\.csv, "
        r"data row 2, 1-based, header excluded\); expected a number",
    ):
        prep.transform_features(bad, source="n.csv")


def test_nan_at_transform_rejected_or_imputed():
    strict = fit_preprocessing(three_rows(), label_column="label")
    lenient = fit_preprocessing(three_rows(), label_column="label", impute="mean")
    new = pd.DataFrame({"age": [np.nan], "city": ["a"]})

    with pytest.raises(DataError, match=r"missing value in column 'age'.*data row 1"):
        strict.transform_features(new)
    # Filled with the reference mean 2 -> standardised 0.
    np.testing.assert_allclose(lenient.transform_features(new), [[0.0, 1.0, 0.0]])


def test_array_input_for_all_numeric_features():
    frame = pd.DataFrame({"a": [0.0, 2.0], "b": [1.0, 3.0], "label": [0, 1]})
    prep = fit_preprocessing(frame, label_column="label")
    np.testing.assert_allclose(
        prep.transform_features(np.array([[1.0, 2.0]])), [[0.0, 0.0]]
    )
    with pytest.raises(DataError, match=r"expected an array of shape \(n, 2\)"):
        prep.transform_features(np.zeros((1, 3)))


def test_array_input_rejected_when_features_are_categorical():
    prep = fit_preprocessing(three_rows(), label_column="label")
    with pytest.raises(
        DataError, match=r"cannot supply categorical columns \['city'\]"
    ):
        prep.transform_features(np.zeros((1, 2)))


@pytest.mark.parametrize(
    "shape", [(3, 64), (3, 8, 8), (3, 1, 8, 8)], ids=["flat", "hw", "chw"]
)
def test_image_accepts_flat_hw_and_chw(shape):
    raw = np.arange(3 * 64, dtype=np.float64).reshape(shape) % 17
    x = image_prep().transform_features(raw)
    expected = (np.arange(3 * 64) % 17 / 16.0).reshape(3, 1, 8, 8)
    assert x.shape == (3, 1, 8, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x, expected, rtol=1e-6)


def test_image_wrong_size_message():
    with pytest.raises(
        DataError,
        match=r"expected images of shape \(1, 8, 8\) or 64 values per row, "
        r"got an array of shape \(5, 7, 7\)",
    ):
        image_prep().transform_features(np.zeros((5, 7, 7)))


def test_image_hw_needs_single_channel():
    prep = image_prep(shape=(3, 2, 2), scale=1.0)
    with pytest.raises(DataError, match=r"expected images of shape \(3, 2, 2\)"):
        prep.transform_features(np.zeros((1, 2, 2)))


# ---------------------------------------------------------------- labels
def test_labels_compare_as_strings():
    prep = image_prep()
    np.testing.assert_array_equal(
        prep.encode_labels(np.array([1, "0", 1.0, "1"], dtype=object)), [1, 0, 1, 1]
    )


def test_unknown_label_names_value_source_and_classes():
    prep = fit_preprocessing(three_rows(), label_column="label")
    with pytest.raises(
        DataError,
        match=r"unknown label 'maybe' in column 'label' \(file n\.csv, data row 2.*"
        r"known classes: \['no', 'yes'\]",
    ):
        prep.encode_labels(pd.Series(["yes", "maybe"]), source="n.csv")


def test_indices_accepted_when_class_names_are_words():
    prep = Preprocessing(
        kind="image",
        label_column="label",
        class_names=("malignant", "benign"),
        image_shape=(1, 1, 1),
    )
    np.testing.assert_array_equal(
        prep.encode_labels(np.array(["benign", 0, 1])), [1, 0, 1]
    )
    with pytest.raises(DataError, match=r"unknown label 2"):
        prep.encode_labels(np.array([2]))


# ---------------------------------------------------------------- serialisation
def test_json_round_trip_gives_identical_transforms():
    frame = pd.DataFrame(
        {
            "age": [1.0, np.nan, 5.0],
            "city": ["a", "b", None],
            "label": [0, 1, 0],
        }
    )
    prep = fit_preprocessing(frame, label_column="label", impute="mean")

    via_dict = Preprocessing.from_dict(json.loads(json.dumps(prep.to_dict())))
    via_json = Preprocessing.from_json(prep.to_json())

    assert via_dict == prep
    assert via_json == prep
    np.testing.assert_array_equal(
        via_json.transform_features(frame), prep.transform_features(frame)
    )


def test_image_round_trip():
    prep = image_prep()
    assert Preprocessing.from_json(prep.to_json()) == prep


def test_from_dict_rejects_unknown_keys():
    d = image_prep().to_dict() | {"colour": "red"}
    with pytest.raises(DataError, match=r"unknown preprocessing key\(s\) \['colour'\]"):
        Preprocessing.from_dict(d)


def test_invalid_preprocessing_lists_problems():
    with pytest.raises(DataError, match=r"kind must be one of .*impute must be one of"):
        Preprocessing(kind="audio", label_column="y", class_names=("a",), impute="x")

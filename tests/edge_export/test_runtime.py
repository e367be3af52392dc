"""The device runtime: same encoding as training, same answers as PyTorch, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedge.edge_export import runtime
from fedge.edge_export.runtime import EdgeModel, InputError, ModelFileError
from fedge.shared.datasets import load_builtin, load_file
from fedge.shared.errors import DataError
from fedge.shared.models import ModelSpec, build_model
from fedge.shared.preprocessing import Preprocessing, fit_preprocessing

REPO = Path(__file__).resolve().parents[2]


def eval_path(run_dir: Path) -> str:
    return json.loads((run_dir / "config.json").read_text())["config"]["data"][
        "eval_data_path"
    ]


def torch_logits(run_dir: Path, x: np.ndarray) -> np.ndarray:
    meta = json.loads((run_dir / "model.json").read_text())
    model = build_model(ModelSpec.from_dict(meta["spec"]))
    model.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
    with torch.inference_mode():
        return model.eval()(torch.from_numpy(x)).numpy()


# ---------------------------------------------------------------- encoding
def mixed_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": [31.0, np.nan, 45.5, 22.0, 60.0],
            "income": ["1000", "2500.5", " 300", "1e3", "+7"],  # numbers as text
            "colour": ["red", None, "blue", "green", "purple"],  # missing, unseen
            "zip": [1000, 2000, 1000, 3000, 2000],  # integer category
            "member": [True, False, True, True, False],
            "label": ["a", "b", "a", "b", "a"],
        }
    )


def test_tabular_encoding_equals_preprocessing_bit_for_bit():
    reference = mixed_frame()
    reference.loc[1, "colour"] = "red"  # the fitted frame itself may not miss...
    prep = fit_preprocessing(
        reference.astype({"zip": str}), label_column="label", impute="mean"
    )
    frame = mixed_frame()  # ...the data a device sees may (impute='mean')

    expected = prep.transform_features(frame)
    got = runtime.transform_features(prep.to_dict(), frame)

    assert got.dtype == np.float32
    assert np.array_equal(got, expected)
    # a dict of columns and a frame with columns in another order give the same
    columns = {c: frame[c].to_numpy() for c in reversed(frame.columns)}
    assert np.array_equal(runtime.transform_features(prep.to_dict(), columns), expected)


def test_object_columns_are_parsed_filled_and_one_hot_encoded_by_hand():
    # n: standardised with mean 2 and scale 2; a missing cell takes the mean.
    # c: one-hot over ("1", "x"); 1.0 matches "1", a missing cell takes the mode
    # "x", an unseen value is all zeros.
    prep = Preprocessing(
        kind="tabular",
        label_column="y",
        class_names=("a", "b"),
        feature_columns=("n", "c"),
        numeric_columns=("n",),
        means=(2.0,),
        scales=(2.0,),
        categories={"c": ("1", "x")},
        impute="mean",
        fill_values={"n": 2.0, "c": "x"},
    ).to_dict()
    frame = pd.DataFrame(
        {"n": ["4", None, " 0", "1e0"], "c": [1.0, None, "x", "zz"]}, dtype=object
    )
    before = frame.copy()

    got = runtime.transform_features(prep, frame)

    expected = [[1.0, 1, 0], [0.0, 0, 1], [-1.0, 0, 1], [-0.5, 0, 0]]
    np.testing.assert_array_equal(got, np.array(expected, dtype=np.float32))
    pd.testing.assert_frame_equal(frame, before)  # the caller's frame is not changed


def test_training_encodes_with_the_device_encoder_and_its_messages(numeric_prep):
    frame = pd.DataFrame({"a": [1.0], "b": ["x"], "c": [0.0]})
    with pytest.raises(InputError) as device:
        runtime.transform_features(numeric_prep, frame, source="f.csv")
    prep = Preprocessing.from_dict(numeric_prep)

    with pytest.raises(DataError) as training:
        prep.transform_features(frame, source="f.csv")

    assert str(training.value) == str(device.value)
    assert isinstance(training.value.__cause__, InputError)


def test_numeric_array_encoding_equals_preprocessing():
    data = load_builtin("breast-cancer", "train")
    prep = data.preprocessing
    raw = np.random.default_rng(0).normal(10, 5, (20, len(prep.feature_columns)))

    assert np.array_equal(
        runtime.transform_features(prep.to_dict(), raw), prep.transform_features(raw)
    )


@pytest.mark.parametrize("layout", [(-1, 1, 8, 8), (-1, 64), (-1, 8, 8)])
def test_image_encoding_equals_preprocessing(layout):
    prep = load_builtin("digits", "test").preprocessing
    raw = np.random.default_rng(1).integers(0, 17, (6, 64)).reshape(layout)

    got = runtime.transform_features(prep.to_dict(), raw)

    assert np.array_equal(got, prep.transform_features(raw))
    assert got.shape == (6, 1, 8, 8)
    assert got.max() <= 1.0  # pixels 0..16 divided by pixel_scale 16


def test_image_frame_encoding_equals_preprocessing():
    prep = load_builtin("digits", "test").preprocessing
    pixels = np.random.default_rng(2).integers(0, 17, (4, 64))
    frame = pd.DataFrame(pixels, columns=[f"x{i}" for i in range(64)])
    frame["label"] = [0, 1, 2, 3]

    assert np.array_equal(
        runtime.transform_features(prep.to_dict(), frame),
        prep.transform_features(frame),
    )


def test_csv_without_pandas_encodes_like_pandas(tabular_run, monkeypatch):
    path = eval_path(tabular_run)
    prep = Preprocessing.from_dict(
        json.loads((tabular_run / "model.json").read_text())["preprocessing"]
    )
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError

    columns = runtime.read_input(path)

    assert isinstance(columns, dict)
    monkeypatch.undo()
    expected = prep.transform_features(pd.read_csv(path))
    assert np.array_equal(runtime.transform_features(prep.to_dict(), columns), expected)


# ---------------------------------------------------------------- predictions
def test_runtime_accuracy_equals_pytorch_on_digits_test_split(digits_run):
    test = load_builtin("digits", "test")
    raw = test.x * 16  # undo pixel_scale: exact for the integer counts 0..16
    model = EdgeModel.load(digits_run / "model.onnx")

    prediction = model.predict(raw)

    logits = torch_logits(digits_run, test.x)
    assert np.mean(prediction.indices == test.y) == np.mean(logits.argmax(1) == test.y)
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(
        prediction.probabilities, shifted / shifted.sum(1, keepdims=True), atol=1e-5
    )
    assert list(prediction.labels[:5]) == [str(i) for i in prediction.indices[:5]]


def test_runtime_accuracy_equals_pytorch_on_tabular_eval_file(tabular_run):
    path = eval_path(tabular_run)
    model = EdgeModel.load(tabular_run / "model.onnx")
    prep = Preprocessing.from_dict(model.metadata.preprocessing)
    data = load_file(path, prep)

    prediction = model.predict(path)  # raw CSV, encoded by the runtime

    torch_accuracy = np.mean(torch_logits(tabular_run, data.x).argmax(1) == data.y)
    assert np.mean(prediction.indices == data.y) == torch_accuracy
    assert torch_accuracy > 0.8
    assert set(prediction.labels) <= {"no", "yes"}
    np.testing.assert_allclose(prediction.probabilities.sum(1), 1.0, rtol=1e-6)


def test_runner_gives_the_same_logits_as_a_plain_run(digits_run):
    model = EdgeModel.load(digits_run / "model.onnx")
    x = load_builtin("digits", "test").x[:1]

    run = model.runner(1)

    np.testing.assert_array_equal(run(x), model.logits(x))


# ---------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def numeric_prep() -> dict:
    return Preprocessing(
        kind="tabular",
        label_column="y",
        class_names=("0", "1"),
        feature_columns=("a", "b", "c"),
        numeric_columns=("a", "b", "c"),
        means=(0.0, 0.0, 0.0),
        scales=(1.0, 1.0, 1.0),
    ).to_dict()


def test_wrong_number_of_features_is_refused(numeric_prep):
    with pytest.raises(
        InputError,
        match=r"expected an array of shape \(n, 3\) with columns \['a', 'b', 'c'\], "
        r"got shape \(2, 4\)",
    ):
        runtime.transform_features(numeric_prep, np.zeros((2, 4)))


def test_missing_dataframe_columns_are_named(tabular_run):
    model = EdgeModel.load(tabular_run / "model.onnx")
    frame = pd.read_csv(eval_path(tabular_run)).drop(columns=["income"])

    with pytest.raises(
        InputError, match=r"missing feature column\(s\) \['income'\]; expected \['age'"
    ):
        model.predict(frame)


def test_an_array_for_a_model_with_categorical_columns_is_refused(tabular_run):
    model = EdgeModel.load(tabular_run / "model.onnx")

    with pytest.raises(
        InputError, match=r"an array cannot supply categorical columns \['colour'\]"
    ):
        model.predict(np.zeros((1, 3)))


def test_non_numeric_values_are_refused(numeric_prep):
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": ["3", "abc"], "c": [0.0, 0.0]})

    with pytest.raises(
        InputError,
        match=r"non-numeric value 'abc' in numeric column 'b' \(input, data row 2, "
        r"1-based, header excluded\); "
        "expected a number",
    ):
        runtime.transform_features(numeric_prep, frame)


def test_non_numeric_pixels_are_refused(digits_run):
    model = EdgeModel.load(digits_run / "model.onnx")

    with pytest.raises(InputError, match="image pixels must be numeric, got dtype <U1"):
        model.predict(np.full((1, 64), "x"))


def test_nan_without_imputation_is_refused(numeric_prep):
    x = np.array([[1.0, 2.0, 3.0], [4.0, np.nan, 6.0]])

    with pytest.raises(
        InputError, match=r"missing value in column 'b' \(input, data row 2, 1-based"
    ):
        runtime.transform_features(numeric_prep, x)


def test_nan_pixels_are_refused(digits_run):
    model = EdgeModel.load(digits_run / "model.onnx")
    x = np.zeros((3, 64))
    x[2, 5] = np.nan

    with pytest.raises(
        InputError, match=r"missing \(NaN\) or infinite pixel value in image 3"
    ):
        model.predict(x)


def test_an_image_of_the_wrong_size_is_refused(digits_run):
    model = EdgeModel.load(digits_run / "model.onnx")

    with pytest.raises(
        InputError,
        match=r"expected images of shape \(1, 8, 8\) or 64 values per row, got an "
        r"array of shape \(2, 7, 7\)",
    ):
        model.predict(np.zeros((2, 7, 7)))


def test_encoded_input_of_the_wrong_shape_is_refused(digits_run):
    model = EdgeModel.load(digits_run / "model.onnx")

    with pytest.raises(
        InputError, match=r"must have shape \(n, 1, 8, 8\), got \(2, 64\)"
    ):
        model.logits(np.zeros((2, 64), np.float32))


def test_a_file_that_is_not_onnx_is_refused(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("name,age\nalice,3\n")

    with pytest.raises(ModelFileError, match="is not a valid ONNX model"):
        EdgeModel.load(path)
    with pytest.raises(ModelFileError, match="model file not found"):
        EdgeModel.load(tmp_path / "absent.onnx")


def test_an_onnx_model_without_fedge_metadata_is_refused(tmp_path):
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["logits"])],
        "plain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])],
    )
    path = tmp_path / "plain.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)

    with pytest.raises(ModelFileError, match="ONNX model without fedge metadata"):
        EdgeModel.load(path)


def test_a_tampered_model_beside_its_manifest_is_refused(digits_run, copy_run):
    run_dir = copy_run(digits_run)
    data = bytearray((run_dir / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (run_dir / "model.onnx").write_bytes(bytes(data))

    with pytest.raises(
        ModelFileError, match=r"does not match .*manifest\.json: sha256"
    ):
        EdgeModel.load(run_dir / "model.onnx")


# ---------------------------------------------------------------- no torch
NO_TORCH_SCRIPT = """
import json, sys
import numpy as np
from fedge.edge_export.runtime import EdgeModel
model = EdgeModel.load(sys.argv[1])
prediction = model.predict(np.zeros((3, 64)))
print(json.dumps({
    "n": len(prediction.labels),
    "torch": "torch" in sys.modules,
    "pandas": "pandas" in sys.modules,
    "shared": sorted(m for m in sys.modules if m.startswith(("shared", "fedge.shared"))),
}))
"""


def test_runtime_never_imports_torch_pandas_or_shared(digits_run):
    out = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT, str(digits_run / "model.int8.onnx")],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])

    assert result == {"n": 3, "torch": False, "pandas": False, "shared": []}

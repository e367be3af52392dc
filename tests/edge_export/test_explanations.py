import numpy as np
import onnx
import pytest
import torch
from torch import nn

from fedge.edge_export.explanations import (
    column_groups,
    examples_per_class,
    occlusion_saliency,
    onnx_predictor,
    permutation_importance,
)
from fedge.edge_export.onnx_export import export_onnx
from fedge.shared.errors import ModelError
from fedge.shared.preprocessing import Preprocessing

PREP = Preprocessing(
    kind="tabular",
    label_column="label",
    class_names=("no", "yes"),
    feature_columns=("signal", "colour", "noise"),
    numeric_columns=("signal", "noise"),
    means=(0.0, 0.0),
    scales=(1.0, 1.0),
    categories={"colour": ("red", "green", "blue")},
)


def test_column_groups_follow_the_encoding_numeric_first_then_one_hot_blocks():
    assert column_groups(PREP) == {"signal": [0], "noise": [1], "colour": [2, 3, 4]}


def test_column_groups_refuse_inputs_without_columns():
    image = Preprocessing(
        kind="image",
        label_column="label",
        class_names=("a", "b"),
        image_shape=(1, 2, 2),
    )
    with pytest.raises(ModelError, match="column groups exist for tabular inputs only"):
        column_groups(image)


def linear_onnx(weights: np.ndarray, bias: np.ndarray, path) -> object:
    """An ONNX model computing ``x @ weights.T + bias``, through the exporter."""
    model = nn.Linear(weights.shape[1], weights.shape[0])
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(weights))
        model.bias.copy_(torch.from_numpy(bias))
    onnx.save_model(export_onnx(model.eval(), (weights.shape[1],)), str(path))
    return onnx_predictor(path)


@pytest.mark.parametrize("informative", ["signal", "colour"])
def test_the_planted_informative_column_ranks_first(informative, tmp_path):
    # Prepare: a table where only one column carries the label, and an ONNX
    # model that reads exactly that column (weights set by hand).
    rng = np.random.default_rng(0)
    n = 400
    signal, noise = rng.normal(size=n), rng.normal(size=n)
    colour = np.eye(3)[rng.integers(0, 3, n)]
    x = np.column_stack([signal, noise, colour]).astype(np.float32)
    weights = np.zeros((2, 5), np.float32)
    bias = np.zeros(2, np.float32)
    if informative == "signal":
        y = (signal > 0).astype(np.int64)
        weights[1, 0] = 5.0
    else:  # the label is "colour is green": a one-hot block
        y = colour[:, 1].astype(np.int64)
        weights[1, 3], bias[1] = 5.0, -2.5
    predict = linear_onnx(weights, bias, tmp_path / "m.onnx")
    assert np.mean(predict(x).argmax(axis=1) == y) == 1.0

    # Execute
    ranking = permutation_importance(predict, x, y, column_groups(PREP), repeats=3)

    # Assert: the planted column first, losing about what a coin flip would
    # (shuffling it keeps a label only by chance); the others lose nothing.
    assert ranking[0].column == informative
    assert ranking[0].importance > 0.25
    assert [c.importance for c in ranking[1:]] == [0.0, 0.0]
    assert {c.column: c.encoded_positions for c in ranking} == {
        "signal": 1,
        "noise": 1,
        "colour": 3,
    }


def test_permutation_importance_refuses_positions_outside_the_inputs():
    x, y = np.zeros((4, 2), np.float32), np.zeros(4, np.int64)
    with pytest.raises(ModelError, match=r"encoded positions \[2\] are outside"):
        permutation_importance(lambda v: np.zeros((len(v), 2)), x, y, {"c": [2]})


def test_permutation_importance_needs_examples():
    x, y = np.zeros((0, 2), np.float32), np.zeros(0, np.int64)
    with pytest.raises(ModelError, match="needs at least one held-out example"):
        permutation_importance(lambda v: np.zeros((len(v), 2)), x, y, {"c": [0]})


def top_left_model(x: np.ndarray) -> np.ndarray:
    """Class 1's logit is 10 times the sum of the first two positions of the
    last axis (and, for images, of the first two rows)."""
    region = x[..., :2, :2] if x.ndim == 4 else x[..., :2]
    score = region.reshape(len(x), -1).sum(axis=1)
    return np.column_stack([np.zeros(len(x)), 10.0 * score - 5.0])


@pytest.mark.parametrize(
    ("shape", "expected_patch"),
    [((1, 16, 16), (2, 2)), ((2, 32), (2,)), ((32,), (2,))],
)
def test_occlusion_marks_only_the_region_the_model_reads(shape, expected_patch):
    # Prepare: every input 1 everywhere, class 1; the model reads one corner.
    x = np.ones((3, *shape), np.float32)
    y = np.ones(3, np.int64)

    saliency, patch = occlusion_saliency(top_left_model, x, y)

    assert patch == expected_patch
    occluded_shape = shape[1:] if len(shape) >= 2 else shape
    assert saliency.shape == (3, *occluded_shape)
    corner = (slice(None), slice(0, 2), slice(0, 2))[: 1 + len(occluded_shape)]
    assert (saliency[corner] > 0.5).all()  # occluding the corner flips the class
    rest = saliency.copy()
    rest[corner] = 0.0
    assert np.abs(rest).max() == 0.0


def test_examples_per_class_takes_the_first_of_each_class_present():
    y = np.array([2, 0, 2, 2, 0, 1])
    assert examples_per_class(y, 4, per_class=2) == {0: [1, 4], 1: [5], 2: [0, 2]}

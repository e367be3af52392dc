"""Byte breakdown of ONNX files, and the clean-up every exported file gets."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_export.onnx_size import drop_runtime_unused, size_breakdown

WEIGHTS = 1000  # elements of the one weight tensor


def scaled_model(dtype: type = np.float32) -> onnx.ModelProto:
    """input * w (1000 elements) + fedge metadata, shape annotations, spare opsets."""
    weight = numpy_helper.from_array(np.ones(WEIGHTS, dtype=dtype), name="w")
    nodes = [helper.make_node("Mul", ["input", "wf"], ["mid"], name="mul")]
    if dtype is np.float32:
        nodes[0].input[1] = "w"
    else:
        nodes.insert(0, helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT))
    nodes.append(helper.make_node("Identity", ["mid"], ["logits"], name="out"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", WEIGHTS])],
        [
            helper.make_tensor_value_info(
                "logits", TensorProto.FLOAT, ["batch", WEIGHTS]
            )
        ],
        initializer=[weight],
        value_info=[
            helper.make_tensor_value_info("mid", TensorProto.FLOAT, ["batch", WEIGHTS])
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", 18),
            helper.make_opsetid("com.microsoft", 1),
            helper.make_opsetid("ai.onnx.ml", 5),
        ],
    )
    helper.set_model_props(
        model, {"fedge.format": "x" * 100, "onnx.infer": "onnxruntime.quant"}
    )
    return model


def test_breakdown_adds_up_to_the_serialised_size():
    model = scaled_model()

    parts = size_breakdown(model)

    assert parts["total"] == len(model.SerializeToString())
    assert sum(v for k, v in parts.items() if k != "total") == parts["total"]


@pytest.mark.parametrize(
    ("dtype", "name", "width"),
    [
        (np.float32, "FLOAT", 4),
        (np.int8, "INT8", 1),
    ],
)
def test_breakdown_attributes_weights_and_metadata_to_their_parts(dtype, name, width):
    parts = size_breakdown(scaled_model(dtype))

    # the raw bytes, plus a few of name, shape and framing
    assert WEIGHTS * width <= parts[f"initializers {name}"] <= WEIGHTS * width + 20
    # key "fedge.format" (12) + value (100), plus framing
    assert 112 <= parts["metadata fedge"] <= 112 + 8
    assert 0 < parts["value_info"] < 40


def test_drop_runtime_unused_keeps_what_the_runtime_reads():
    model = scaled_model()
    x = np.arange(2 * WEIGHTS, dtype=np.float32).reshape(2, WEIGHTS)

    drop_runtime_unused(model)

    assert len(model.graph.value_info) == 0
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 18)]
    assert [p.key for p in model.metadata_props] == ["fedge.format"]
    assert [n.name for n in model.graph.node] == ["mul", "out"]
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString())
    np.testing.assert_array_equal(session.run(None, {"input": x})[0], x)


def test_drop_runtime_unused_keeps_opsets_that_nodes_use():
    model = scaled_model()
    model.graph.node[1].domain = "com.microsoft"  # as if a contrib op

    drop_runtime_unused(model)

    assert {o.domain for o in model.opset_import} == {"", "com.microsoft"}

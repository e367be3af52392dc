"""Byte breakdown of ONNX files, and the clean-up every exported file gets."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fedge.edge_export.onnx_size import drop_runtime_unused, size_breakdown
from fedge.shared.errors import ModelError

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


def varint_bytes(value: int) -> int:
    """Length of ``value`` as a protobuf varint: 7 bits per byte."""
    return max(1, (value.bit_length() + 6) // 7)


def field_bytes(message) -> int:
    """Bytes one sub-message field takes in its parent, counted from the wire format.

    A one-byte tag (every field used here has a number below 16), the
    varint length, then the message itself.
    """
    size = len(message.SerializeToString())
    return 1 + varint_bytes(size) + size


def with_shape_constant(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add an int64 initializer, so the breakdown has two element types to split."""
    shape = numpy_helper.from_array(np.array([1, WEIGHTS], np.int64), name="shape")
    model.graph.initializer.append(shape)
    return model


@pytest.mark.parametrize(
    ("dtype", "name", "width"),
    [
        (np.float32, "FLOAT", 4),
        (np.int8, "INT8", 1),
    ],
)
def test_each_part_is_the_bytes_of_its_own_fields(dtype, name, width):
    model = with_shape_constant(scaled_model(dtype))
    graph = model.graph
    graph_bytes = len(graph.SerializeToString())
    # Counted field by field from the protobuf wire format, not by removal.
    weights, shape = graph.initializer
    expected = {
        f"initializers {name}": field_bytes(weights),
        "initializers INT64": field_bytes(shape),
        "metadata fedge": field_bytes(model.metadata_props[0]),
        "metadata other": field_bytes(model.metadata_props[1]),
        "nodes": sum(field_bytes(n) for n in graph.node),
        "value_info": field_bytes(graph.value_info[0]),
        "inputs/outputs": field_bytes(graph.input[0]) + field_bytes(graph.output[0]),
        "opset imports": sum(field_bytes(o) for o in model.opset_import),
    }
    # What remains: the IR version, the graph's tag and length, the graph's name.
    assert [f.name for f, _ in model.ListFields()] == [
        "ir_version",
        "graph",
        "opset_import",
        "metadata_props",
    ]
    assert [f.name for f, _ in graph.ListFields()] == [
        "node",
        "name",
        "initializer",
        "input",
        "output",
        "value_info",
    ]
    other = (
        (1 + varint_bytes(model.ir_version))
        + (1 + varint_bytes(graph_bytes))
        + (1 + 1 + len(graph.name))
    )
    total = len(model.SerializeToString())
    # The hand count covers the whole file: the graph's serialised size framed
    # once, plus the model's own fields.
    assert total == (
        1
        + varint_bytes(model.ir_version)
        + 1
        + varint_bytes(graph_bytes)
        + graph_bytes
        + sum(field_bytes(o) for o in model.opset_import)
        + sum(field_bytes(p) for p in model.metadata_props)
    )
    # No removal shortens the graph's length prefix, so no part holds a byte of it.
    for part in ("initializers", "nodes", "value_info", "inputs/outputs"):
        removed = sum(v for k, v in expected.items() if k.startswith(part))
        assert varint_bytes(graph_bytes - removed) == varint_bytes(graph_bytes)

    parts = size_breakdown(model)

    assert parts == {**expected, "other": other, "total": total}
    # The weights' raw bytes, computed from the array, are inside their part.
    raw = numpy_helper.to_array(weights)
    assert raw.nbytes == WEIGHTS * width == len(weights.raw_data)
    assert raw.nbytes < parts[f"initializers {name}"] < raw.nbytes + 20


def test_a_model_whose_parts_overlap_beyond_its_size_is_refused():
    # A bare model: no IR version, producer, graph name or opset; its only
    # framing is the graph's tag and 2-byte length prefix (3 bytes). Removing
    # any of the four graph parts takes the graph under 128 bytes, so each
    # part also counts the prefix byte that shortens: 4 bytes counted for the
    # 3 there are.
    model = onnx.ModelProto()
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.ones(7, np.float32), "w"))
    graph.node.append(helper.make_node("Identity", ["input"], ["logits"], name="node"))
    graph.input.append(helper.make_tensor_value_info("input", TensorProto.FLOAT, [7]))
    graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [7]))
    graph.value_info.append(
        helper.make_tensor_value_info("m" * 10, TensorProto.FLOAT, [7])
    )
    graph_bytes = len(graph.SerializeToString())
    smallest_part = min(
        *(field_bytes(f) for f in (*graph.initializer, *graph.node, *graph.value_info)),
        field_bytes(graph.input[0]) + field_bytes(graph.output[0]),
    )
    assert graph_bytes >= 128 and graph_bytes - smallest_part < 128
    total = 1 + 2 + graph_bytes

    with pytest.raises(
        ModelError,
        match=rf"cannot break down this ONNX model's {total} bytes: its parts add "
        rf"up to {graph_bytes + 4}, 1 more than the file, expected at most the "
        r"file's size \(removing each graph part also shortened the graph's length "
        r"prefix, and that byte was counted once per part\); no breakdown is "
        r"returned",
    ):
        size_breakdown(model)


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

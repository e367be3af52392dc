"""Metadata inside the ONNX file: what the exporter writes is what the runtime reads."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto, helper

from fedge.edge_export.metadata import (
    build_metadata,
    copy_metadata,
    read_metadata,
    strip_exporter_metadata,
    write_metadata,
)
from fedge.edge_export.runtime import EdgeMetadata, EdgeModel, ModelFileError

SPEC = {
    "name": "mlp",
    "input_shape": [2],
    "num_classes": 2,
    "hidden": [4],
    "activation": "relu",
    "groups": 4,
}
PREP = {
    "kind": "tabular",
    "label_column": "y",
    "class_names": ["no", "yes"],
    "feature_columns": ["a", "b"],
}
PROVENANCE = {
    "rounds": 5,
    "strategy": "fedavg",
    "num-clients": 3,
    "dataset": "file",
    "dataset-fingerprint": "0123abcd",
    "versions": {"fedge": "0.1.0", "flwr": "1.42.0"},
}
PRIVACY = {
    "dp-mode": "sample",
    "epsilon-max": 2.5,
    "delta": 1e-5,
    "noise-multiplier": 1.3,
    "max-grad-norm": 0.7,
}


def tiny_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["logits"], name="n0")],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def props() -> dict[str, str]:
    return build_metadata(
        spec=SPEC,
        preprocessing=PREP,
        input_name="input",
        input_shape=(2,),
        output_name="logits",
        provenance=PROVENANCE,
        privacy=PRIVACY,
    )


def test_written_metadata_is_read_back_by_the_runtime(tmp_path):
    model = tiny_model()
    write_metadata(model, props())
    path = tmp_path / "m.onnx"
    onnx.save(model, path)

    meta = EdgeModel.load(path).metadata

    assert meta.model_name == "mlp"
    assert meta.spec == SPEC
    assert (meta.input_name, meta.input_shape, meta.input_dtype) == (
        "input",
        ("batch", 2),
        "float32",
    )
    assert meta.output_name == "logits"
    assert meta.preprocessing == PREP
    assert meta.class_labels == ("no", "yes")
    assert meta.provenance == PROVENANCE
    assert meta.privacy == PRIVACY
    assert meta.quantization == {"method": "none"}
    assert model.producer_name == "fedge"


def test_exported_models_carry_model_json_and_survive_quantisation(digits_run):
    model_json = json.loads((digits_run / "model.json").read_text())

    fp32 = EdgeModel.load(digits_run / "model.onnx").metadata
    int8 = EdgeModel.load(digits_run / "model.int8.onnx").metadata

    for meta in (fp32, int8):
        assert meta.spec == model_json["spec"]
        assert meta.preprocessing == model_json["preprocessing"]
        assert meta.provenance == model_json["provenance"]
        assert meta.privacy == {
            "dp-mode": "sample",
            "epsilon-max": 3.25,
            "delta": 1e-5,
            "noise-multiplier": 1.1,
            "max-grad-norm": 1.0,
        }
        assert meta.class_labels == tuple(str(i) for i in range(10))
        assert meta.input_shape == ("batch", 1, 8, 8)
    assert fp32.quantization == {"method": "none"}
    assert int8.quantization["method"] == "static-qdq"


def test_copy_metadata_overrides_only_the_given_keys():
    source, target = tiny_model(), tiny_model()
    write_metadata(source, props())
    write_metadata(source, {"other.key": "kept out"})

    copy_metadata(source, target, **{"fedge.quantization": '{"method": "dynamic"}'})

    copied = read_metadata(target)
    assert "other.key" not in copied
    assert copied["fedge.quantization"] == '{"method": "dynamic"}'
    assert {k: v for k, v in copied.items() if k != "fedge.quantization"} == {
        k: v for k, v in props().items() if k != "fedge.quantization"
    }


def test_strip_exporter_metadata_removes_stack_traces_but_not_fedge_keys():
    model = tiny_model()
    entry = model.graph.node[0].metadata_props.add()
    entry.key, entry.value = "pkg.torch.onnx.stack_trace", 'File "/home/me/secret.py"'
    write_metadata(model, {**props(), "pkg.torch.export": "x"})

    signature = model.graph.metadata_props.add()
    signature.key = "pkg.torch.export.ExportedProgram.graph_signature"
    signature.value = "p_fc_weight: PARAMETER target='fc.weight'"
    kept = model.graph.metadata_props.add()
    kept.key, kept.value = "someone.else", "kept"

    strip_exporter_metadata(model)

    assert len(model.graph.node[0].metadata_props) == 0
    assert set(read_metadata(model)) == set(props())
    assert [p.key for p in model.graph.metadata_props] == ["someone.else"]


def test_incomplete_or_foreign_metadata_is_refused():
    partial = {k: v for k, v in props().items() if k != "fedge.privacy"}
    with pytest.raises(
        ModelFileError, match=r"incomplete fedge metadata: missing \['fedge.privacy'\]"
    ):
        EdgeMetadata.from_props(partial, source="m.onnx")
    newer = {**props(), "fedge.format": "fedge-onnx/9"}
    with pytest.raises(
        ModelFileError, match="format 'fedge-onnx/9', this runtime reads 'fedge-onnx/1'"
    ):
        EdgeMetadata.from_props(newer, source="m.onnx")
    broken = {**props(), "fedge.model-spec": "{not json"}
    with pytest.raises(
        ModelFileError, match=r"metadata 'fedge\.model-spec' is not valid JSON"
    ):
        EdgeMetadata.from_props(broken, source="m.onnx")

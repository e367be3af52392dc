"""int8: accuracy within a point of fp32 on the test split, much smaller, chosen by rule."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fedge.edge_export.manifest import read_manifest
from fedge.edge_export.pipeline import _choose
from fedge.edge_export.quantize import ArrayCalibrationReader
from fedge.shared.datasets import load_builtin


def accuracy(path, data) -> float:
    logits = ort.InferenceSession(str(path)).run(None, {"input": data.x})[0]
    return float(np.mean(logits.argmax(1) == data.y))


def test_int8_keeps_accuracy_within_one_point_of_fp32(digits_run):
    test = load_builtin("digits", "test")

    fp32 = accuracy(digits_run / "model.onnx", test)
    int8 = accuracy(digits_run / "model.int8.onnx", test)

    assert fp32 > 0.85
    assert 100 * (fp32 - int8) <= 1.0


def test_int8_is_much_smaller_and_both_methods_are_reported(digits_run):
    fp32_size = (digits_run / "model.onnx").stat().st_size
    int8_size = (digits_run / "model.int8.onnx").stat().st_size
    quant = read_manifest(digits_run).quantization

    assert int8_size < 0.4 * fp32_size  # weights are 4x smaller; graph overhead stays
    assert set(quant["candidates"]) == {"static-qdq", "dynamic"}
    assert quant["chosen"] == "static-qdq"
    chosen = quant["candidates"]["static-qdq"]
    assert chosen["size-bytes"] == int8_size
    assert chosen["size-ratio"] == pytest.approx(int8_size / fp32_size)
    assert quant["fp32-size-bytes"] == fp32_size


def test_exported_files_carry_nothing_the_runtime_ignores(digits_run):
    for name in ("model.onnx", "model.int8.onnx"):
        proto = onnx.load(str(digits_run / name))

        assert len(proto.graph.value_info) == 0, name
        assert not proto.graph.metadata_props, name  # the exporter's signature
        used = {node.domain for node in proto.graph.node} | {""}
        assert {o.domain for o in proto.opset_import} <= used, name
        assert all(p.key.startswith("fedge.") for p in proto.metadata_props), name


def candidate(drop: float) -> dict:
    return {"drop-points": drop, "within-bound": drop <= 1.0}


@pytest.mark.parametrize(
    ("static_drop", "dynamic_drop", "expected"),
    [
        (0.0, 0.0, "static-qdq"),
        (0.9, 0.1, "static-qdq"),
        (1.5, 0.5, "dynamic"),
        (2.0, 3.0, None),
    ],
)
def test_auto_keeps_static_if_it_holds_accuracy_else_dynamic_else_none(
    static_drop, dynamic_drop, expected
):
    candidates = {
        "static-qdq": candidate(static_drop),
        "dynamic": candidate(dynamic_drop),
    }

    chosen, reason = _choose("auto", candidates)

    assert chosen == expected
    assert ("no method within" in reason) == (expected is None)


def test_an_explicit_method_is_kept_even_outside_the_bound():
    candidates = {"static-qdq": candidate(5.0), "dynamic": candidate(0.0)}

    assert _choose("static-qdq", candidates) == ("static-qdq", "requested explicitly")


def test_calibration_reader_yields_every_example_once_in_batches():
    x = np.arange(70 * 3, dtype=np.float32).reshape(70, 3)
    reader = ArrayCalibrationReader(x, "input", batch_size=32)

    batches = []
    while (batch := reader.get_next()) is not None:
        batches.append(batch["input"])

    assert [len(b) for b in batches] == [32, 32, 6]
    np.testing.assert_array_equal(np.concatenate(batches), x)

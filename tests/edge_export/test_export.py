"""export_run: one checked ONNX file, parity with PyTorch, nothing left on failure."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from fedge.edge_export.manifest import read_manifest
from fedge.edge_export.onnx_export import (
    RECURRENT_TRACE_STEPS,
    _trace_shape,
    check_onnx,
    export_onnx,
)
from fedge.edge_export.pipeline import export_run, refuse_failed_run
from fedge.shared.datasets import load_builtin, load_file
from fedge.shared.errors import ModelError
from fedge.shared.models import ModelSpec, build_model, for_export
from fedge.shared.preprocessing import Preprocessing
from fedge.shared.run_folder import load_run_config

# The embedded artefacts (test_embedded.py) come with every export; the
# offline-optimised graph only when it ran faster than model.onnx.
EMBEDDED_FILES = {"model.ort", "required_operators.config", "model.fixed.onnx"}
EXPORT_FILES = {"model.onnx", "model.int8.onnx", "manifest.json", *EMBEDDED_FILES}
IF_FASTER = {"model.optimized.onnx"}


def reference_model(run_dir):
    """Rebuild the PyTorch model straight from the run folder (independent path)."""
    meta = json.loads((run_dir / "model.json").read_text())
    model = build_model(ModelSpec.from_dict(meta["spec"]))
    model.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
    return model.eval(), meta


def held_out(run_dir, meta):
    data = load_run_config(run_dir).data
    if data.dataset == "file":
        prep = Preprocessing.from_dict(meta["preprocessing"])
        return load_file(data.eval_data_path, prep)
    return load_builtin(data.dataset, "test")


@pytest.mark.parametrize("fixture", ["digits_run", "tabular_run"])
def test_onnx_matches_pytorch_on_held_out_split(fixture, request):
    run_dir = request.getfixturevalue(fixture)
    model, meta = reference_model(run_dir)
    data = held_out(run_dir, meta)
    with torch.inference_mode():
        expected = model(torch.from_numpy(data.x)).numpy()
    session = ort.InferenceSession(str(run_dir / "model.onnx"))
    got = session.run(None, {"input": data.x})[0]

    assert np.max(np.abs(got - expected)) <= 1e-4
    assert np.array_equal(got.argmax(1), expected.argmax(1))
    parity = read_manifest(run_dir).parity
    assert parity["passed"] is True
    assert parity["num-examples"] == len(data)
    assert parity["max-abs-diff"] <= 1e-4
    assert parity["top1-agreement"] == 1.0


@pytest.mark.parametrize("fixture", ["digits_run", "tabular_run"])
def test_export_is_one_checked_file_with_dynamic_batch_at_opset_18(fixture, request):
    run_dir = request.getfixturevalue(fixture)
    proto = onnx.load(str(run_dir / "model.onnx"), load_external_data=False)

    onnx.checker.check_model(proto, full_check=True)
    assert not any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer
    )
    assert {p.name for p in run_dir.iterdir()} - IF_FASTER == {
        "model.pt",
        "model.json",
        "config.json",
        *EXPORT_FILES,
        # the model card export writes, and its figures
        "model_card.json",
        "model_card.md",
        "card",
    }
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 18)]
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param  # symbolic, not a fixed size
    session = ort.InferenceSession(str(run_dir / "model.onnx"))
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]]
    for batch in (1, 7):
        out = session.run(None, {"input": np.zeros((batch, *shape), np.float32)})[0]
        assert out.shape[0] == batch


def test_manifest_accuracy_figures_match_an_independent_computation(digits_run):
    model, _ = reference_model(digits_run)
    data = load_builtin("digits", "test")
    with torch.inference_mode():
        torch_acc = float(
            (model(torch.from_numpy(data.x)).argmax(1).numpy() == data.y).mean()
        )
    int8 = ort.InferenceSession(str(digits_run / "model.int8.onnx"))
    int8_acc = float((int8.run(None, {"input": data.x})[0].argmax(1) == data.y).mean())

    accuracy = read_manifest(digits_run).accuracy
    assert accuracy["split"] == "digits[test]"
    assert accuracy["num-examples"] == len(data) == 450
    assert accuracy["pytorch"] == pytest.approx(torch_acc)
    assert accuracy["onnx-fp32"] == pytest.approx(torch_acc)
    assert accuracy["onnx-int8"] == pytest.approx(int8_acc)
    assert torch_acc > 0.85  # the fixture really learned something


def test_failed_parity_writes_nothing(digits_run, copy_run):
    run_dir = copy_run(digits_run)
    for name in (*EXPORT_FILES, *IF_FASTER, "model_card.json", "model_card.md"):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "card")

    with pytest.raises(
        ModelError, match=r"parity failed: max \|logit difference\|.*tolerance 1e-12"
    ):
        export_run(run_dir, tolerance=1e-12, quantize="none")

    assert sorted(os.listdir(run_dir)) == ["config.json", "model.json", "model.pt"]


def test_failed_reexport_keeps_the_previous_export_intact(digits_run, copy_run):
    from fedge.edge_export.manifest import verify_run

    run_dir = copy_run(digits_run)
    before = {n: (run_dir / n).read_bytes() for n in EXPORT_FILES}

    with pytest.raises(ModelError, match="parity failed"):
        export_run(run_dir, tolerance=1e-12)

    assert {n: (run_dir / n).read_bytes() for n in EXPORT_FILES} == before
    assert verify_run(run_dir).ok
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]


def test_export_refuses_bad_arguments_and_folders(tmp_path, digits_run):
    with pytest.raises(ModelError, match="quantize must be one of"):
        export_run(digits_run, quantize="int4")
    with pytest.raises(ModelError, match="tolerance must be > 0, got 0"):
        export_run(digits_run, tolerance=0)
    with pytest.raises(
        ModelError, match=r"model.json not found; is .* a finished fedge run"
    ):
        export_run(tmp_path)


UNTRAINED = (
    "no round aggregated an update: after rounds 1-2 (4 nodes sampled, 4 failed, "
    "0 dropped, 0 refused) the model is still the untrained initial one"
)


def untrained_run(run_dir):
    """What a run in which no round aggregated an update leaves: no model."""
    run_dir.mkdir()
    (run_dir / "metrics.csv").write_text("round,central-accuracy\n0,0.04\n")
    (run_dir / "status.json").write_text(
        json.dumps({"state": "failed", "message": UNTRAINED, "resumable": False})
    )
    return run_dir


def test_a_run_that_trained_nothing_is_refused_with_its_reason(tmp_path):
    run_dir = untrained_run(tmp_path / "r")

    with pytest.raises(ModelError) as refused:
        export_run(run_dir)

    assert str(refused.value) == (
        f"{run_dir} has no trained model to export: its run failed ({UNTRAINED}); "
        "nothing was exported"
    )
    assert sorted(os.listdir(run_dir)) == ["metrics.csv", "status.json"]


def test_a_failed_run_that_saved_its_model_may_still_be_exported(digits_run, copy_run):
    # Its run failed in the export at the end, after the model was saved.
    run_dir = copy_run(digits_run)
    (run_dir / "status.json").write_text(
        json.dumps({"state": "failed", "message": "ModelError: parity failed"})
    )

    refuse_failed_run(run_dir)  # no error: load_run_inputs and the checks decide


def test_weights_that_do_not_fit_the_spec_are_refused(digits_run, copy_run):
    run_dir = copy_run(digits_run)
    meta = json.loads((run_dir / "model.json").read_text())
    meta["spec"]["hidden"] = [8, 16, 32]
    (run_dir / "model.json").write_text(json.dumps(meta))

    with pytest.raises(
        ModelError, match=r"model\.pt does not fit the spec in model\.json"
    ):
        export_run(run_dir)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "input_shape"), [("cnn1d", (3, 40)), ("gru", (3, 50))]
)
def test_series_models_export_their_swapped_layers_with_parity(name, input_shape):
    spec = ModelSpec(name=name, input_shape=input_shape, num_classes=4)
    model = build_model(spec, model_seed=0).eval()
    x = np.random.default_rng(0).standard_normal((5, *input_shape)).astype(np.float32)

    proto = check_onnx(
        export_onnx(model, input_shape), input_shape=input_shape, num_classes=4
    )

    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == list(input_shape)  # the real length
    session = ort.InferenceSession(proto.SerializeToString())
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()  # the model as trained
    np.testing.assert_allclose(session.run(None, {"input": x})[0], expected, atol=1e-5)
    ops = {node.op_type: node for node in proto.graph.node}
    if name == "cnn1d":  # (1, k) kernels: ONNX Runtime's blocked 2-D kernels
        kernels = [
            list(attr.ints)
            for node in proto.graph.node
            if node.op_type == "Conv"
            for attr in node.attribute
            if attr.name == "kernel_shape"
        ]
        assert kernels == [[1, 5], [1, 5]]
    else:  # one GRU op, traced at a few steps, runs at any length
        assert "GRU" in ops


def test_only_recurrent_series_models_are_traced_at_a_few_steps():
    gru = for_export(
        build_model(ModelSpec(name="gru", input_shape=(6, 100), num_classes=4))
    )
    cnn1d = for_export(
        build_model(ModelSpec(name="cnn1d", input_shape=(6, 100), num_classes=4))
    )

    assert _trace_shape(gru, (6, 100)) == (6, RECURRENT_TRACE_STEPS)
    assert _trace_shape(gru, (6, 5)) == (6, 5)  # already short
    assert _trace_shape(cnn1d, (6, 100)) == (6, 100)


def test_export_alone_writes_and_lists_no_model_card(digits_run, copy_run):
    run_dir = copy_run(digits_run)
    for name in ("model_card.json", "model_card.md"):
        (run_dir / name).unlink()

    manifest = export_run(run_dir, quantize="none")

    assert not (run_dir / "model_card.json").exists()
    assert not any(name.startswith("model_card") for name in manifest.artefacts)

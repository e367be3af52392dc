"""Run folders and models written before the run folder's contract still work."""

import json

import onnx

from fedge.edge_export.manifest import verify_run
from fedge.edge_export.runtime import EdgeModel


def test_a_legacy_run_folder_exports_verifies_and_keeps_its_epsilon(tabular_run):
    # tabular_run was written as fedge wrote folders before (nested config,
    # ε as "max-epsilon" in model.json) and exported by today's exporter.
    saved = json.loads((tabular_run / "model.json").read_text())
    assert saved["privacy"]["max-epsilon"] == 3.25

    report = verify_run(tabular_run)
    privacy = EdgeModel.load(tabular_run / "model.onnx").metadata.privacy

    assert report.ok, report.problems
    assert privacy["epsilon-max"] == 3.25
    assert "max-epsilon" not in privacy


def test_an_old_onnx_file_naming_epsilon_max_epsilon_still_reads(digits_run, tmp_path):
    # The privacy metadata exactly as the exporter wrote it before the rename.
    old_privacy = {
        "dp-mode": "sample",
        "max-epsilon": 2.75,
        "delta": 1e-5,
        "noise-multiplier": 1.1,
        "max-grad-norm": 1.0,
    }
    model = onnx.load(str(digits_run / "model.onnx"))
    for prop in model.metadata_props:
        if prop.key == "fedge.privacy":
            prop.value = json.dumps(old_privacy, sort_keys=True)
    old_file = tmp_path / "old.onnx"
    onnx.save(model, str(old_file))

    privacy = EdgeModel.load(old_file).metadata.privacy

    assert privacy == {
        "dp-mode": "sample",
        "epsilon-max": 2.75,
        "delta": 1e-5,
        "noise-multiplier": 1.1,
        "max-grad-norm": 1.0,
    }

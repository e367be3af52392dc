"""manifest.json and verify: every artefact hashed; any change is found and refused."""

from __future__ import annotations

import hashlib
import json

import onnx
import pytest

from edge_export.manifest import read_manifest, verify_run
from shared.errors import ModelError


def test_manifest_lists_every_artefact_with_its_sha256_and_size(digits_run):
    manifest = read_manifest(digits_run)

    optional = {"model.optimized.onnx"}  # listed only when it ran faster
    assert set(manifest.artefacts) - optional == {
        "model.onnx",
        "model.int8.onnx",
        "model.pt",
        "model.json",
        "config.json",
        "model_card.json",
        "model_card.md",
        "model.ort",
        "required_operators.config",
        "model.fixed.onnx",
    }
    for name, entry in manifest.artefacts.items():
        data = (digits_run / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["size-bytes"] == len(data)
    assert manifest.export["opset"] == 18
    assert manifest.data["calibration"].startswith("digits[train]")


def test_an_intact_export_verifies(digits_run):
    report = verify_run(digits_run)

    assert report.ok
    assert report.problems == []
    assert "model.onnx: metadata matches model.json" in report.checked


def test_a_changed_byte_is_found(digits_run, copy_run):
    run_dir = copy_run(digits_run)
    data = bytearray((run_dir / "model.int8.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (run_dir / "model.int8.onnx").write_bytes(bytes(data))

    report = verify_run(run_dir)

    assert not report.ok
    assert any(
        p.startswith("model.int8.onnx: sha256") and "changed after export" in p
        for p in report.problems
    )


def test_truncated_and_missing_files_are_found(digits_run, copy_run):
    run_dir = copy_run(digits_run)
    (run_dir / "model.pt").write_bytes((run_dir / "model.pt").read_bytes()[:100])
    (run_dir / "config.json").unlink()

    problems = verify_run(run_dir).problems

    assert any(
        p.startswith("model.pt: size 100 bytes, manifest says") for p in problems
    )
    assert "config.json: listed in the manifest but missing" in problems


def test_metadata_changed_with_a_recomputed_hash_is_still_found(digits_run, copy_run):
    run_dir = copy_run(digits_run)
    path = run_dir / "model.onnx"
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "fedge.privacy":
            prop.value = json.dumps({"dp-mode": "sample", "epsilon-max": 0.1})
    onnx.save(model, str(path))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["artefacts"]["model.onnx"]["sha256"] = hashlib.sha256(
        path.read_bytes()
    ).hexdigest()
    manifest["artefacts"]["model.onnx"]["size-bytes"] = path.stat().st_size
    (run_dir / "manifest.json").write_text(json.dumps(manifest))

    problems = verify_run(run_dir).problems

    assert "model.onnx: metadata 'fedge.privacy' differs from model.json" in problems
    assert "model.int8.onnx: metadata differs from model.onnx's" in problems


def test_a_missing_or_foreign_manifest_is_an_error(digits_run, copy_run, tmp_path):
    with pytest.raises(ModelError, match=r"no manifest\.json in .*; run `fedge export"):
        verify_run(tmp_path)
    run_dir = copy_run(digits_run)
    (run_dir / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(
        ModelError, match="is not a fedge manifest: format 'something-else'"
    ):
        verify_run(run_dir)

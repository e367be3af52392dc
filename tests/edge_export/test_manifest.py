"""manifest.json and verify: every artefact hashed; any change is found and refused."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import onnx
import pytest
from onnx import numpy_helper

from fedge.edge_export.embedded import to_ort_format
from fedge.edge_export.manifest import describe_artefact, read_manifest, verify_run
from fedge.shared.errors import ModelError


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
    for name in ("model.ort", "model.fixed.onnx"):
        assert (
            f"{name}: outputs match model.onnx's within 0.0001 on 8 inputs"
            in report.checked
        )


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


def rehash(run_dir, name: str) -> None:
    """Rewrite the manifest entry of ``name``, as anyone who can write the folder can."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["artefacts"][name] = describe_artefact(
        run_dir / name, manifest["artefacts"][name]["role"]
    )
    (run_dir / "manifest.json").write_text(json.dumps(manifest))


def with_first_weight_doubled(source, target) -> None:
    model = onnx.load(str(source))
    weights = next(t for t in model.graph.initializer if t.dims and len(t.dims) > 1)
    weights.CopyFrom(
        numpy_helper.from_array(2 * numpy_helper.to_array(weights), weights.name)
    )
    onnx.save(model, str(target))


@pytest.mark.parametrize("name", ["model.fixed.onnx", "model.ort"])
def test_an_artefact_changed_with_a_recomputed_hash_is_run_and_named(
    name, digits_run, copy_run, tmp_path
):
    run_dir = copy_run(digits_run)
    if name == "model.ort":  # a valid ORT-format file of a changed model
        with_first_weight_doubled(run_dir / "model.onnx", tmp_path / "model.onnx")
        converted, _ = to_ort_format(tmp_path / "model.onnx", tmp_path)
        shutil.copyfile(converted, run_dir / name)
    else:
        with_first_weight_doubled(run_dir / name, run_dir / name)
    rehash(run_dir, name)

    report = verify_run(run_dir)

    assert not report.ok
    assert f"{name}: sha256 and size match" in report.checked  # hashes can't tell
    (problem,) = report.problems
    assert re.fullmatch(
        rf"{re.escape(name)}: outputs differ from model\.onnx's by up to \S+ on 8 "
        r"inputs \(tolerance 0\.0001\): one of the two was changed after export",
        problem,
    )


def test_an_artefact_onnx_runtime_cannot_load_is_named_in_one_line(
    digits_run, copy_run
):
    run_dir = copy_run(digits_run)
    (run_dir / "model.ort").write_bytes(b"not an ORT-format model")
    rehash(run_dir, "model.ort")

    (problem,) = verify_run(run_dir).problems

    assert problem.startswith("model.ort: ONNX Runtime cannot load model.ort: ")
    assert "\n" not in problem

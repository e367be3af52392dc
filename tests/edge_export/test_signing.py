"""Signed exports: hashes detect corruption, the signature detects tampering."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fedge.edge_export.manifest import describe_artefact, read_manifest, verify_run
from fedge.edge_export.runtime import EdgeModel, SignatureError, verify_signature
from fedge.edge_export.signing import generate_key_pair, sign_manifest
from fedge.shared.errors import ConfigError, ModelError

REPO = Path(__file__).resolve().parents[2]
FEDGE = [sys.executable, "-m", "fedge.cli.app"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """The exporter's key pair and a stranger's public key."""
    root = tmp_path_factory.mktemp("keys")
    public = generate_key_pair(root / "exporter")
    stranger = generate_key_pair(root / "stranger")
    return root / "exporter", public, stranger


@pytest.fixture
def signed_run(digits_run, copy_run, keys):
    run_dir = copy_run(digits_run)
    sign_manifest(run_dir, keys[0])
    return run_dir


def _tamper(run_dir: Path) -> None:
    """Flip the int8 model's float weights and recompute its manifest entry, as
    anyone who can write the folder can: the files stay valid and consistent.

    The int8 file, because verify cannot run it against model.onnx (its
    outputs differ by design); a changed fp32, ORT or fixed file is caught
    without a key (test_manifest)."""
    path = run_dir / "model.int8.onnx"
    model = onnx.load(str(path))
    weights = next(
        t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT
    )
    weights.CopyFrom(
        numpy_helper.from_array(-numpy_helper.to_array(weights), weights.name)
    )
    onnx.save(model, str(path))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["artefacts"]["model.int8.onnx"] = describe_artefact(path, "onnx-int8")
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def fedge(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FEDGE, *map(str, argv)], capture_output=True, text=True, cwd=REPO
    )


def test_keygen_writes_a_pair_and_never_overwrites(tmp_path):
    public = generate_key_pair(tmp_path / "k")
    assert public == tmp_path / "k.pub"
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    assert b"BEGIN PRIVATE KEY" in (tmp_path / "k").read_bytes()
    assert b"BEGIN PUBLIC KEY" in public.read_bytes()
    before = (tmp_path / "k").read_bytes()
    with pytest.raises(ConfigError, match=r"k already exists; refusing to overwrite"):
        generate_key_pair(tmp_path / "k")
    assert (tmp_path / "k").read_bytes() == before
    done = fedge("keygen", tmp_path / "k")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "already exists" in done.stderr


def test_a_signed_export_verifies_with_the_public_key(signed_run, keys):
    report = verify_run(signed_run, public_key=keys[1])
    assert report.ok and report.signature == "verified"
    model = EdgeModel.load(signed_run / "model.int8.onnx", public_key=keys[1])
    assert model.signature == f"verified with {keys[1]}"
    # Without a key nothing is checked, and the runtime says so.
    assert EdgeModel.load(signed_run / "model.int8.onnx").signature == "unsigned"
    assert verify_run(signed_run).signature == "unsigned"


def test_a_rewritten_model_and_manifest_pass_the_hashes_but_not_the_signature(
    signed_run, keys
):
    _tamper(signed_run)
    # The hashes agree with each other again: only the signature can tell.
    assert verify_run(signed_run).ok
    report = verify_run(signed_run, public_key=keys[1])
    assert not report.ok and report.signature == "invalid"
    assert any(
        "does not verify: the manifest was changed after it was signed" in p
        for p in report.problems
    )
    with pytest.raises(
        SignatureError, match="manifest was changed after it was signed"
    ):
        EdgeModel.load(signed_run / "model.onnx", public_key=keys[1])


def test_another_key_and_a_missing_signature_are_refused(signed_run, keys):
    with pytest.raises(
        SignatureError, match=r"does not verify: not signed by .*stranger"
    ):
        verify_signature(signed_run / "manifest.json", keys[2])
    (signed_run / "manifest.sig").unlink()
    with pytest.raises(
        SignatureError, match=r"no manifest.sig, the export is unsigned"
    ):
        EdgeModel.load(signed_run / "model.onnx", public_key=keys[1])
    sign_manifest(signed_run, keys[0])
    with pytest.raises(SignatureError, match=r"public key .*nowhere.pub not found"):
        verify_signature(signed_run / "manifest.json", signed_run / "nowhere.pub")


def test_a_model_the_signed_manifest_does_not_list_is_refused(signed_run, keys):
    manifest = json.loads((signed_run / "manifest.json").read_text())
    del manifest["artefacts"]["model.int8.onnx"]
    (signed_run / "manifest.json").write_text(json.dumps(manifest))
    sign_manifest(signed_run, keys[0])  # a valid signature of that manifest
    with pytest.raises(SignatureError, match=r"does not list model\.int8\.onnx"):
        EdgeModel.load(signed_run / "model.int8.onnx", public_key=keys[1])


def test_signing_needs_a_manifest_and_an_ec_private_key(digits_run, copy_run, tmp_path):
    with pytest.raises(ModelError, match=r"no manifest\.json in .* to sign"):
        sign_manifest(tmp_path, tmp_path / "k")
    run_dir = copy_run(digits_run)
    with pytest.raises(ConfigError, match=r"signing key .*missing not found"):
        sign_manifest(run_dir, tmp_path / "missing")
    (tmp_path / "junk").write_text("not a key")
    with pytest.raises(ConfigError, match="is not an unencrypted PEM elliptic-curve"):
        sign_manifest(run_dir, tmp_path / "junk")
    assert not (run_dir / "manifest.sig").exists()


def test_cli_verify_and_predict_refuse_a_tampered_export_in_one_line(
    signed_run, keys, tmp_path
):
    inputs = tmp_path / "x.npz"
    np.savez(inputs, x=np.zeros((2, 1, 8, 8)))
    ok = fedge(
        "predict", signed_run / "model.int8.onnx", inputs, "--public-key", keys[1]
    )
    assert ok.returncode == 0, ok.stderr
    assert "signature verified with" in ok.stderr
    unsigned = fedge("predict", signed_run / "model.int8.onnx", inputs)
    assert "unsigned (signature not checked" in unsigned.stderr

    _tamper(signed_run)
    refused = fedge("predict", signed_run, inputs, "--public-key", keys[1])
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0
    assert "manifest was changed after it was signed" in refused.stderr
    verified = fedge("verify", signed_run, "--public-key", keys[1])
    assert verified.returncode == 1
    assert "Traceback" not in verified.stderr
    assert "manifest was changed after it was signed" in verified.stderr
    hashes_only = fedge("verify", signed_run)
    assert hashes_only.returncode == 0
    assert "unsigned: signature not checked" in hashes_only.stdout


def test_verify_reports_corrupted_metadata_bytes_not_a_traceback(digits_run, copy_run):
    run_dir = copy_run(digits_run)
    model = run_dir / "model.onnx"
    data = model.read_bytes()
    at = data.index(b"fedge-onnx/1")  # inside the metadata value
    model.write_bytes(data[:at] + b"\xff" + data[at + 1 :])

    done = fedge("verify", run_dir)

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "model.onnx: sha256" in done.stderr
    assert "metadata entry 'fedge.format' is not UTF-8 text" in done.stderr
    manifest = read_manifest(run_dir)
    assert "model.onnx" in manifest.artefacts

"""The device install: a fresh virtualenv with only requirements-edge.txt, no torch.

Only the ``edge_export/runtime/`` folder, the model file, the signed manifest and the
exporter's public key are copied to the "device"; the model loads only with
its signature checked, and the prediction there must equal the one made here.
A failed install fails the test: a device that cannot install is a bug.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedge.edge_export.runtime import EdgeModel
from fedge.edge_export.signing import generate_key_pair, sign_manifest

REPO = Path(__file__).resolve().parents[2]

DEVICE_SCRIPT = """
import importlib.util, json, sys
import numpy as np
import runtime
model = runtime.EdgeModel.load("model.int8.onnx", public_key="exporter.pub")
try:
    runtime.EdgeModel.load("model.int8.onnx", public_key="stranger.pub")
    refused = ""
except runtime.SignatureError as e:
    refused = str(e)
x = np.load("inputs.npy")
p = model.predict(x)
print(json.dumps({
    "signature": model.signature,
    "refused": refused,
    "labels": [str(v) for v in p.labels],
    "probabilities": p.probabilities.tolist(),
    "torch_installed": importlib.util.find_spec("torch") is not None,
    "pandas_installed": importlib.util.find_spec("pandas") is not None,
}))
"""


@pytest.mark.slow
def test_runtime_alone_predicts_in_a_venv_without_torch(digits_run, copy_run, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # pip's own configuration, as on a device (this machine's names its local
    # mirrors; model-signing is not on them, so the package index serves it).
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    install = subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "-q",
            "-r",
            str(REPO / "requirements-edge.txt"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert install.returncode == 0, (
        "pip could not install requirements-edge.txt: " + install.stderr[-2000:]
    )
    run_dir = copy_run(digits_run)
    key = tmp_path / "keys" / "exporter"
    generate_key_pair(key)
    generate_key_pair(tmp_path / "keys" / "stranger")
    sign_manifest(run_dir, key)
    device = tmp_path / "device"
    device.mkdir()
    shutil.copytree(
        REPO / "edge_export" / "runtime",
        device / "runtime",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for name in ("model.int8.onnx", "manifest.json", "manifest.sig"):
        shutil.copy(run_dir / name, device / name)
    for name in ("exporter.pub", "stranger.pub"):
        shutil.copy(tmp_path / "keys" / name, device / name)
    x = np.random.default_rng(0).integers(0, 17, (4, 1, 8, 8)).astype(np.float64)
    np.save(device / "inputs.npy", x)

    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", DEVICE_SCRIPT],
        cwd=device,
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in env.items() if k != "PYTHONPATH"},
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])

    assert result["signature"] == "verified with exporter.pub"
    assert "not signed by stranger.pub" in result["refused"]
    assert result["torch_installed"] is False
    assert result["pandas_installed"] is False
    here = EdgeModel.load(digits_run / "model.int8.onnx").predict(x)
    assert result["labels"] == list(here.labels)
    # ONNX Runtime may differ by version between the venv and here.
    np.testing.assert_allclose(result["probabilities"], here.probabilities, atol=1e-4)

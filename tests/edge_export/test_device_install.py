"""The device install: a fresh virtualenv with only requirements-edge.txt, no torch.

Only ``edge_export/runtime.py`` and the model file are copied to the "device";
the prediction there must equal the one made here.
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

from edge_export.runtime import EdgeModel

REPO = Path(__file__).resolve().parents[2]
# This machine's local package index (offline); elsewhere pip's own config applies.
LOCAL_INDEX = Path("/opt/pypi/simple")

DEVICE_SCRIPT = """
import importlib.util, json, sys
import numpy as np
import runtime
model = runtime.EdgeModel.load("model.int8.onnx")
x = np.load("inputs.npy")
p = model.predict(x)
print(json.dumps({
    "labels": [str(v) for v in p.labels],
    "probabilities": p.probabilities.tolist(),
    "torch_installed": importlib.util.find_spec("torch") is not None,
    "pandas_installed": importlib.util.find_spec("pandas") is not None,
}))
"""


@pytest.mark.slow
def test_runtime_alone_predicts_in_a_venv_without_torch(digits_run, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    if LOCAL_INDEX.is_dir():
        env["PIP_INDEX_URL"] = LOCAL_INDEX.as_uri()
        env.pop("PIP_EXTRA_INDEX_URL", None)
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
    if install.returncode != 0:
        pytest.skip(
            "pip could not install requirements-edge.txt offline here: "
            + install.stderr.strip().splitlines()[-1]
        )
    device = tmp_path / "device"
    device.mkdir()
    shutil.copy(REPO / "edge_export" / "runtime.py", device / "runtime.py")
    shutil.copy(digits_run / "model.int8.onnx", device / "model.int8.onnx")
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

    assert result["torch_installed"] is False
    assert result["pandas_installed"] is False
    here = EdgeModel.load(digits_run / "model.int8.onnx").predict(x)
    assert result["labels"] == list(here.labels)
    # ONNX Runtime may differ by version between the venv and here.
    np.testing.assert_allclose(result["probabilities"], here.probabilities, atol=1e-4)

"""`fedge export` of a user's own architecture (tests/fixtures/own_nets.py): the
same ONNX export, parity check, int8, signed metadata carrying the model's
identity, and torch-free prediction; an operator ONNX cannot express refused."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fedge.edge_export.metadata import read_metadata
from fedge.edge_export.pipeline import export_run
from fedge.edge_export.runtime import KEY_MODEL_IDENTITY
from fedge.edge_export.signing import generate_key_pair
from fedge.reports.model_card import export_run_with_card
from fedge.shared.datasets import load_builtin
from fedge.shared.errors import ModelError
from fedge.shared.models import build_model, default_spec
from tests.edge_export.conftest import train, write_run

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "own_nets.py"
SVD_NET = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, *, input_shape, num_classes):
        super().__init__()
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        blocks = x.reshape(x.shape[0], 16, 2, 2)
        return self.fc(torch.linalg.svdvals(blocks)[..., 0])
"""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _user_run(run_dir: Path, nets: Path, callable_name: str, *, steps: int) -> Path:
    data = load_builtin("digits", "train")
    prep = data.preprocessing
    reference = f"{nets}:{callable_name}"
    spec = default_spec(reference, prep.input_shape, prep.num_classes)
    model = build_model(spec, model_seed=0)
    if steps:
        train(model, data, steps=steps, lr=0.05)
    return write_run(
        run_dir, model, spec, data, {"dataset": "digits", "model": reference}
    )


@pytest.fixture(scope="module")
def own_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The residual MLP trained on digits, exported and signed."""
    root = tmp_path_factory.mktemp("own")
    nets = root / "nets.py"
    shutil.copyfile(FIXTURE, nets)
    run_dir = _user_run(root / "run", nets, "ResidualMLP", steps=300)
    public_key = generate_key_pair(root / "exporter")
    export_run_with_card(run_dir, sign_key=root / "exporter")
    return run_dir, nets, public_key


def test_the_export_passes_parity_and_keeps_int8(own_run) -> None:
    run_dir, _, _ = own_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["parity"]["max-abs-diff"] <= 1e-4
    assert manifest["parity"]["top1-agreement"] == 1.0
    assert (run_dir / "model.int8.onnx").is_file()
    # Trained 300 steps, the user's net classifies the digits; int8 keeps it.
    assert manifest["accuracy"]["onnx-fp32"] > 0.85
    assert manifest["accuracy"]["onnx-int8"] >= manifest["accuracy"]["onnx-fp32"] - 0.01


def test_every_artefact_and_the_card_carry_the_identity(own_run) -> None:
    run_dir, nets, _ = own_run
    identity = {
        "reference": f"{nets}:ResidualMLP",
        "sha256": _sha256(nets),
        "package": "",
        "version": "",
    }
    for name in ("model.onnx", "model.int8.onnx"):
        props = read_metadata(run_dir / name)
        assert json.loads(props[KEY_MODEL_IDENTITY]) == identity, name
    card = json.loads((run_dir / "model_card.json").read_text())
    assert card["model"]["code"] == identity
    assert f"SHA-256 `{_sha256(nets)}`" in (run_dir / "model_card.md").read_text()


def test_the_device_predicts_without_torch_and_checks_the_signature(
    own_run, tmp_path: Path, predict_in_fresh_process
) -> None:
    run_dir, _, public_key = own_run
    test = load_builtin("digits", "test")
    raw = test.x[:40] * 16.0  # the device gets raw 0-16 pixels
    np.savez(tmp_path / "x.npz", x=raw)

    imports_torch = predict_in_fresh_process(
        [
            run_dir / "model.onnx",
            tmp_path / "x.npz",
            "-o",
            tmp_path / "p.csv",
            "--public-key",
            public_key,
        ]
    )

    assert not imports_torch
    with (tmp_path / "p.csv").open() as f:
        labels = [row["label"] for row in csv.DictReader(f)]
    model = build_model(default_spec(f"{own_run[1]}:ResidualMLP", (1, 8, 8), 10))
    model.load_state_dict(torch.load(run_dir / "model.pt"))
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(test.x[:40])).argmax(dim=1)
    names = test.preprocessing.class_names
    assert labels == [names[int(k)] for k in expected]


def test_an_operator_onnx_cannot_express_is_refused_and_model_pt_stays(
    tmp_path: Path,
) -> None:
    nets = tmp_path / "svd_nets.py"
    nets.write_text(SVD_NET)
    run_dir = _user_run(tmp_path / "run", nets, "Net", steps=0)
    weights = (run_dir / "model.pt").read_bytes()

    with pytest.raises(
        ModelError,
        match=r"ONNX cannot express operator aten\._linalg_svd of the Net model at "
        r"opset 18 \(.+\); nothing was exported and model\.pt is unchanged",
    ):
        export_run(run_dir)

    assert (run_dir / "model.pt").read_bytes() == weights
    assert not (run_dir / "model.onnx").exists()
    assert not list(run_dir.glob(".export-*"))


def test_export_refuses_model_code_changed_since_training(tmp_path: Path) -> None:
    nets = tmp_path / "nets.py"
    shutil.copyfile(FIXTURE, nets)
    run_dir = _user_run(tmp_path / "run", nets, "ResidualMLP", steps=0)
    trained_with = _sha256(nets)
    nets.write_text(FIXTURE.read_text() + "\n# edited after the run\n")

    with pytest.raises(
        ModelError, match=rf"sent .*sha256 {trained_with}.*has .*sha256 {_sha256(nets)}"
    ):
        export_run(run_dir)
    assert not (run_dir / "model.onnx").exists()

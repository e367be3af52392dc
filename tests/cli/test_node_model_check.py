"""``fedge node check --model``: does the model the coordinator names import on
this node, build on its data, and is it the coordinator's code?"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fedge.cli.app import main
from fedge.shared.datasets import fit_file
from fedge.shared.models import default_spec
from fedge.shared.run_folder import ModelInfo, PrivacySummary, write_model_info

NET = """
from torch import nn
def Net(*, input_shape, num_classes):
    return nn.Linear(input_shape[0], num_classes)
"""


@pytest.fixture
def node_file(tmp_path: Path) -> Path:
    path = tmp_path / "node.csv"
    path.write_text("age,income,label\n30,1.5,yes\n41,2.0,no\n27,0.5,yes\n")
    return path


@pytest.fixture
def nets(tmp_path: Path) -> Path:
    path = tmp_path / "nets.py"
    path.write_text(NET)
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _coordinators_model_json(folder: Path, node_file: Path, reference: str) -> Path:
    """The model.json of a run of the coordinator's, naming the user's model."""
    prep = fit_file(node_file, label_column="label").preprocessing
    model_info = ModelInfo(
        spec=default_spec(reference, prep.input_shape, prep.num_classes),
        preprocessing=prep,
        provenance={},
        privacy=PrivacySummary(dp_mode="none"),
    )
    folder.mkdir()
    write_model_info(folder, model_info)
    return folder / "model.json"


def test_an_importable_model_is_reported_with_its_sha256(
    node_file: Path, nets: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["node", "check", str(node_file), "--model", f"{nets}:Net"]) == 0
    out = capsys.readouterr().out
    assert (
        f"model {nets}:Net (sha256 {_sha256(nets)}): imports and gives 2 logits" in out
    )
    assert "compare the sha256 with the coordinator's file (sha256sum)" in out


def test_the_coordinators_sha256_is_compared(
    node_file: Path, nets: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["node", "check", str(node_file), "--model", f"{nets}:Net"]
    assert main([*argv, "--model-sha256", _sha256(nets).upper()]) == 0
    assert "same as the coordinator's" in capsys.readouterr().out

    assert main([*argv, "--model-sha256", "ab" * 32]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert (
        f"this node's copy has sha256 {_sha256(nets)}, the coordinator's has "
        f"{'ab' * 32}; nothing would be trained"
    ) in err


def test_a_model_json_names_the_model_and_its_identity(
    tmp_path: Path, node_file: Path, nets: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card = _coordinators_model_json(tmp_path / "run", node_file, f"{nets}:Net")
    argv = ["node", "check", str(node_file), "--reference", str(card)]
    assert main(argv) == 0
    assert "same as the coordinator's" in capsys.readouterr().out

    sent = _sha256(nets)
    nets.write_text(NET + "# this node's own edit\n")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"the coordinator sent {nets}:Net (sha256 {sent})" in err
    assert f"this machine has {nets}:Net (sha256 {_sha256(nets)})" in err


def test_a_model_missing_on_the_node_is_refused(
    node_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["node", "check", str(node_file), "--model", "not_here_nets:Net"]) == 2
    assert "module 'not_here_nets' cannot be imported" in capsys.readouterr().err


def test_a_sha256_without_a_model_is_refused(
    node_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["node", "check", str(node_file), "--model-sha256", "ab" * 32]) == 2
    assert "--model-sha256 needs the user's model" in capsys.readouterr().err

"""Initial weights: read with weights_only, every mismatch listed, the file hashed."""

from __future__ import annotations

import hashlib
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from fedge.server.run_folder import save_final_model
from fedge.shared.config import from_run_config
from fedge.shared.datasets import load_builtin
from fedge.shared.errors import ConfigError, ModelError
from fedge.shared.initial_weights import (
    load_initial_weights,
    prepare_start,
    read_initial_weights,
    weight_mismatches,
)
from fedge.shared.models import build_model, default_spec
from fedge.shared.run_folder import MODEL_WEIGHTS_FILE, PrivacySummary


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 4))


def save(tmp_path: Path, state: dict, name: str = "w.pt") -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_loads_a_fitting_state_dict_and_hashes_the_file(tmp_path):
    source = small_model()
    with torch.no_grad():
        for p in source.parameters():
            p.fill_(0.5)
    path = save(tmp_path, source.state_dict())
    model = small_model()

    weights = load_initial_weights(model, str(path))

    assert weights.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert all(torch.equal(p, torch.full_like(p, 0.5)) for p in model.parameters())


def test_a_previous_runs_model_pt_is_a_starting_point(tmp_path):
    # model.pt as the coordinator writes it at the end of every run.
    prep = load_builtin("breast-cancer", "test").preprocessing
    spec = default_spec("mlp", prep.input_shape, prep.num_classes)
    trained = build_model(spec, model_seed=5)
    save_final_model(
        tmp_path,
        state_dict=trained.state_dict(),
        spec=spec,
        preprocessing=prep,
        provenance={"rounds": 4},
        privacy=PrivacySummary(dp_mode="none"),
        metrics={"accuracy": 0.9},
    )
    model = build_model(spec, model_seed=0)

    load_initial_weights(model, str(tmp_path / MODEL_WEIGHTS_FILE))

    for name, tensor in trained.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_every_mismatch_is_listed_in_one_error(tmp_path):
    model = small_model()  # 0.weight (2, 3), 0.bias (2,), 2.weight (4, 2), 2.bias (4,)
    state = OrderedDict(
        [
            ("0.weight", torch.zeros(2, 5)),  # wrong shape
            ("0.bias", torch.zeros(2)),  # fits
            ("2.weight", torch.zeros(3, 2)),  # wrong shape
            ("head.weight", torch.zeros(1, 1)),  # unexpected
            ("head.bias", torch.zeros(1)),  # unexpected
        ]
    )  # 2.bias missing
    path = save(tmp_path, state)
    before = [p.detach().clone() for p in model.parameters()]

    with pytest.raises(ModelError) as raised:
        load_initial_weights(model, str(path))

    message = str(raised.value)
    assert "5 mismatch(es)" in message
    for line in (
        "missing '2.bias' (expected shape (4,))",
        "unexpected 'head.weight' (shape (1, 1))",
        "unexpected 'head.bias' (shape (1,))",
        "wrong shape '0.weight': expected (2, 3), got (2, 5)",
        "wrong shape '2.weight': expected (4, 2), got (3, 2)",
    ):
        assert line in message
    assert "Nothing was started" in message
    # Nothing half-loaded.
    assert all(
        torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)
    )


def test_weights_that_fit_have_no_mismatch():
    model = small_model()
    assert weight_mismatches(model.state_dict(), small_model().state_dict()) == []


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"initial-weights .*nope\.pt not found on "):
        read_initial_weights(str(tmp_path / "nope.pt"))


def test_a_folder_is_not_a_weights_file(tmp_path):
    with pytest.raises(ConfigError, match=r"is a folder, not a file"):
        read_initial_weights(str(tmp_path))


def test_a_corrupt_file_is_refused_naming_torch_load(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a torch file at all")

    with pytest.raises(ModelError, match=r"cannot be read as PyTorch weights"):
        read_initial_weights(str(path))


def test_pickled_code_is_refused_by_weights_only(tmp_path):
    path, marker = tmp_path / "evil.pt", tmp_path / "ran"
    # Unpickling this would create `marker`: weights_only must refuse it.
    path.write_bytes(pickle.dumps(_RunsCode(marker)))

    with pytest.raises(ModelError, match=r"weights_only=True\) failed"):
        read_initial_weights(str(path))
    assert not marker.exists()


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_file_without_tensors_is_not_a_state_dict(tmp_path):
    path = save(tmp_path, [torch.zeros(2)])
    with pytest.raises(ModelError, match=r"holds list, expected a state_dict"):
        read_initial_weights(str(path))
    path = save(tmp_path, {"epoch": 3, "w": torch.zeros(2)}, "ckpt.pt")
    with pytest.raises(ModelError, match=r"whose entries \['epoch'\] are not tensors"):
        read_initial_weights(str(path))


def test_prepare_start_records_hash_and_frozen_names_for_provenance(tmp_path):
    path = save(tmp_path, small_model().state_dict())
    config = from_run_config(
        {"initial-weights": str(path), "trainable": "2.*"}, fill_defaults=True
    )

    start = prepare_start(small_model(), config.train)

    assert start.provenance() == {
        "initial-weights": str(path),
        "initial-weights-sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "trainable": ["2.weight", "2.bias"],
        "frozen": ["0.weight", "0.bias"],
    }


def test_default_start_adds_nothing_to_provenance():
    config = from_run_config({}, fill_defaults=True)
    assert prepare_start(small_model(), config.train).provenance() == {}

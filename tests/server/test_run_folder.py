import json
import re
from importlib import metadata

import pytest
import torch

from fedge.server.run_folder import (
    check_resumable,
    resolve_run_dir,
    run_identity,
    save_final_model,
    start_run_folder,
)
from fedge.shared.config import from_run_config
from fedge.shared.datasets import load_builtin
from fedge.shared.errors import ConfigError
from fedge.shared.models import ModelSpec, build_model, default_spec
from fedge.shared.preprocessing import Preprocessing
from fedge.shared.run_folder import PrivacySummary, load_run_config, read_status


@pytest.fixture
def config(tmp_path):
    return from_run_config(
        {"output-dir": str(tmp_path / "runs"), "run-name": "r1", "proximal-mu": 0.3},
        fill_defaults=True,
    )


# ---------------------------------------------------------------- run dir
def test_run_dir_is_output_dir_slash_run_name(config, tmp_path):
    assert resolve_run_dir(config) == (tmp_path / "runs" / "r1").resolve()


def test_unnamed_run_gets_a_timestamp_folder(tmp_path):
    config = from_run_config(
        {"output-dir": str(tmp_path), "run-name": ""}, fill_defaults=True
    )

    run_dir = resolve_run_dir(config)

    assert run_dir.parent == tmp_path.resolve()
    assert re.fullmatch(r"\d{8}-\d{6}", run_dir.name)


# ---------------------------------------------------------------- start
def test_start_writes_config_with_versions_and_marks_running(config, tmp_path):
    run_dir = tmp_path / "runs" / "r1"

    start_run_folder(run_dir, config)

    saved = json.loads((run_dir / "config.json").read_text())
    for package in ("flwr", "torch", "opacus", "numpy"):
        assert saved["versions"][package] == metadata.version(package)
    assert saved["versions"]["fedge"] == metadata.version("fedge")
    # One shape: the flat kebab-case run config, which alone rebuilds the config.
    assert set(saved) == {"run-config", "versions"}
    assert saved["run-config"]["proximal-mu"] == 0.3
    assert from_run_config(saved["run-config"]) == config
    assert load_run_config(run_dir) == config
    assert read_status(run_dir)["state"] == "running"


# ---------------------------------------------------------------- final model
@pytest.mark.parametrize(
    ("dataset", "model"), [("digits", "cnn"), ("breast-cancer", "mlp")]
)
def test_saved_model_rebuilds_from_its_spec_and_loads_the_weights(
    tmp_path, dataset, model
):
    prep = load_builtin(dataset, "test").preprocessing
    spec = default_spec(model, prep.input_shape, prep.num_classes, activation="tanh")
    trained = build_model(spec, model_seed=5)
    x = torch.randn(3, *spec.input_shape)

    save_final_model(
        tmp_path,
        state_dict=trained.state_dict(),
        spec=spec,
        preprocessing=prep,
        provenance={"rounds": 4},
        privacy=PrivacySummary(dp_mode="sample", epsilon_max=1.5, delta=1e-5),
        metrics={"accuracy": 0.9},
    )

    meta = json.loads((tmp_path / "model.json").read_text())
    rebuilt_spec = ModelSpec.from_dict(meta["spec"])
    assert rebuilt_spec == spec
    # A different seed, so equal outputs can only come from the loaded weights.
    rebuilt = build_model(rebuilt_spec, model_seed=99)
    rebuilt.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    original = trained.state_dict()
    assert all(torch.equal(v, original[k]) for k, v in rebuilt.state_dict().items())
    # Outputs only to a tolerance: CPU convolution kernels may differ by an ulp.
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), trained.eval()(x))
    assert Preprocessing.from_dict(meta["preprocessing"]) == prep
    assert meta["format"] == "fedge-model/1"
    assert meta["provenance"]["rounds"] == 4
    assert meta["provenance"]["versions"]["torch"] == metadata.version("torch")
    assert meta["privacy"] == {
        "dp-mode": "sample",
        "epsilon-max": 1.5,
        "delta": 1e-5,
        "noise-multiplier": None,
        "max-grad-norm": None,
    }
    assert meta["metrics"] == {"accuracy": 0.9}


# ---------------------------------------------------------------- resume
def test_run_identity_is_made_once_and_kept_across_resumes(tmp_path):
    run_dir = tmp_path / "r1"
    run_dir.mkdir()
    first = run_identity(run_dir)
    assert re.fullmatch(r"r1-[0-9a-f]{12}", first)
    assert run_identity(run_dir) == first  # a resumed coordinator reads it back
    assert run_identity(tmp_path) != first  # another folder, another run


def test_resume_with_different_settings_is_refused(config, tmp_path):
    run_dir = resolve_run_dir(config)
    start_run_folder(run_dir, config)
    flat = config.to_flat()
    changed = from_run_config(flat | {"proximal-mu": 0.5, "resume": True})
    with pytest.raises(
        ConfigError,
        match=r"Cannot resume .*r1: its run was configured differently "
        r"\('proximal-mu': 0.3 -> 0.5\)",
    ):
        check_resumable(run_dir, changed)
    # What only steers waiting and writing may change.
    check_resumable(
        run_dir, from_run_config(flat | {"resume": True, "round-timeout-s": 5.0})
    )


def test_a_sign_key_the_coordinator_cannot_read_is_refused_before_round_1(tmp_path):
    from fedge.server.federation import check_sign_key

    flat = from_run_config({}, fill_defaults=True).to_flat()
    check_sign_key(from_run_config(flat))  # "" = unsigned: fine
    (tmp_path / "key").write_text("a key")
    check_sign_key(from_run_config(flat | {"sign-key": str(tmp_path / "key")}))
    with pytest.raises(ConfigError, match=r"sign-key .*nowhere not found on the"):
        check_sign_key(from_run_config(flat | {"sign-key": str(tmp_path / "nowhere")}))

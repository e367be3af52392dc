import json

import pytest

from fedge.shared.config import from_run_config
from fedge.shared.datasets import load_builtin
from fedge.shared.errors import ModelError
from fedge.shared.models import default_spec
from fedge.shared.run_folder import (
    ModelInfo,
    PrivacySummary,
    load_flat_run_config,
    load_run_config,
    read_model_info,
    read_status,
    save_run_config,
    write_model_info,
    write_status,
)


# ---------------------------------------------------------------- status
def test_failed_status_keeps_the_message_and_extras(tmp_path):
    write_status(tmp_path, "running")

    write_status(
        tmp_path,
        "failed",
        "round 3: only 0 of 2 nodes replied; run stopped",
        last_round=2,
    )

    status = read_status(tmp_path)
    assert status["state"] == "failed"
    assert status["message"] == "round 3: only 0 of 2 nodes replied; run stopped"
    assert status["last_round"] == 2
    assert status["updated"]


def test_status_of_a_folder_without_one_is_unknown(tmp_path):
    assert read_status(tmp_path) == {"state": "unknown"}


# ---------------------------------------------------------------- config.json
def test_run_config_round_trips_through_config_json(tmp_path):
    config = from_run_config(
        {"strategy": "fedprox", "proximal-mu": 0.3, "dp-mode": "sample"},
        fill_defaults=True,
    )

    save_run_config(tmp_path, config)

    assert load_run_config(tmp_path) == config
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["run-config"]["proximal-mu"] == 0.3
    assert "config" not in saved  # one shape only


def test_an_old_nested_config_json_still_reads(tmp_path):
    # What run folders held before the flat shape was the only one: a nested
    # "config" section (RunConfig sections by attribute name), here without
    # the flat copy, and with a key fedge has since dropped.
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "config": {
                    "data": {"dataset": "breast-cancer", "partition_seed": 7},
                    "strategy": {"name": "fedmedian"},
                    "dp": {"mode": "none", "retired_field": 1},
                },
                "versions": {"fedge": "0.1.0"},
            }
        )
    )

    config = load_run_config(tmp_path)

    assert config.data.dataset == "breast-cancer"
    assert config.data.partition_seed == 7
    assert config.strategy.name == "fedmedian"
    # Keys the old folder lacks take today's defaults.
    defaults = from_run_config({}, fill_defaults=True)
    assert config.train == defaults.train


def test_config_json_without_a_run_config_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"versions": {}}))

    with pytest.raises(ModelError, match=r"config.json holds no run config"):
        load_flat_run_config(tmp_path)


def test_a_folder_without_config_json_has_no_run_config(tmp_path):
    assert load_flat_run_config(tmp_path) == {}
    with pytest.raises(ModelError, match=r"config.json not found; is .* a fedge"):
        load_run_config(tmp_path)


def test_config_json_that_is_not_json_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{half")

    with pytest.raises(ModelError, match=r"config.json is not valid JSON"):
        load_flat_run_config(tmp_path)


def test_config_json_holding_a_list_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("[]")

    with pytest.raises(ModelError, match=r"must hold a JSON object, got list"):
        load_flat_run_config(tmp_path)


# ---------------------------------------------------------------- model.json
@pytest.fixture
def model_info():
    prep = load_builtin("breast-cancer", "test").preprocessing
    return ModelInfo(
        spec=default_spec("mlp", prep.input_shape, prep.num_classes),
        preprocessing=prep,
        provenance={"rounds": 3, "strategy": "fedavg"},
        privacy=PrivacySummary(
            dp_mode="sample",
            epsilon_max=2.5,
            delta=1e-5,
            noise_multiplier=1.1,
            max_grad_norm=1.0,
            extra={"accountant": "rdp"},
        ),
        metrics={"accuracy": 0.9},
    )


def test_model_info_round_trips_through_model_json(tmp_path, model_info):
    write_model_info(tmp_path, model_info)

    back = read_model_info(tmp_path)

    assert back.spec == model_info.spec
    assert back.preprocessing == model_info.preprocessing
    assert back.privacy == model_info.privacy
    assert back.metrics == {"accuracy": 0.9}
    assert back.provenance["rounds"] == 3
    assert back.provenance["versions"]["fedge"]  # added on write
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["format"] == "fedge-model/1"
    assert meta["privacy"] == {
        "dp-mode": "sample",
        "epsilon-max": 2.5,
        "delta": 1e-5,
        "noise-multiplier": 1.1,
        "max-grad-norm": 1.0,
        "accountant": "rdp",
    }


def test_an_old_model_json_naming_epsilon_max_epsilon_still_reads(tmp_path, model_info):
    old = model_info.to_dict()
    old["privacy"] = {
        "dp-mode": "sample",
        "max-epsilon": 3.25,
        "delta": 1e-5,
        "noise-multiplier": 1.1,
        "max-grad-norm": 1.0,
    }
    (tmp_path / "model.json").write_text(json.dumps(old))

    privacy = read_model_info(tmp_path).privacy

    assert privacy.epsilon_max == 3.25
    assert privacy.to_dict()["epsilon-max"] == 3.25
    assert "max-epsilon" not in privacy.to_dict()


def test_model_json_of_another_format_is_refused(tmp_path, model_info):
    (tmp_path / "model.json").write_text(
        json.dumps({**model_info.to_dict(), "format": "other/2"})
    )

    with pytest.raises(ModelError, match=r"format 'other/2', expected 'fedge-model/1'"):
        read_model_info(tmp_path)


def test_model_json_without_a_spec_is_refused(tmp_path, model_info):
    d = model_info.to_dict()
    del d["spec"]
    (tmp_path / "model.json").write_text(json.dumps(d))

    with pytest.raises(ModelError, match=r"has no \['spec'\]; was it written by fedge"):
        read_model_info(tmp_path)


def test_a_folder_without_model_json_is_refused(tmp_path):
    with pytest.raises(ModelError, match=r"model.json not found; is .* finished"):
        read_model_info(tmp_path)

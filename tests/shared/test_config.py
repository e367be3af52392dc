import dataclasses
import os
import tomllib
from pathlib import Path

import pytest

import fedge.shared.config as config_module
from fedge.shared.config import (
    RunConfig,
    closest_key,
    default_run_config,
    from_run_config,
)
from fedge.shared.config_keys import CONFIG_KEYS, flat_from_nested
from fedge.shared.errors import ConfigError

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def pyproject_defaults():
    # Independent reference: the table as tomllib reads it, not the loader's copy.
    with PYPROJECT.open("rb") as f:
        return tomllib.load(f)["tool"]["flwr"]["app"]["config"]


def problems_of(excinfo):
    """The problems a ConfigError lists, one by one; each is also in the message."""
    problems = excinfo.value.problems
    assert all(p in str(excinfo.value) for p in problems)
    return problems


# ---------------------------------------------------------------- defaults
def test_default_run_config_is_the_pyproject_table():
    assert default_run_config() == pyproject_defaults()


def test_default_run_config_is_a_fresh_dict_each_call():
    defaults = default_run_config()
    defaults["num-server-rounds"] = -1

    assert default_run_config() == pyproject_defaults()


def test_an_edited_pyproject_is_read_again(tmp_path, monkeypatch):
    package = tmp_path / "fedge"
    package.mkdir()
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text("[tool.flwr.app.config]\nnum-server-rounds = 3\n")
    monkeypatch.setattr(config_module.resources, "files", lambda name: package)
    assert default_run_config() == {"num-server-rounds": 3}

    pyproject.write_text("[tool.flwr.app.config]\nnum-server-rounds = 7\n")
    later_ns = pyproject.stat().st_mtime_ns + 1_000_000_000
    os.utime(pyproject, ns=(later_ns, later_ns))

    assert default_run_config() == {"num-server-rounds": 7}


def test_a_missing_pyproject_is_refused_with_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module.resources, "files", lambda name: tmp_path / "x")

    with pytest.raises(ConfigError, match=r"Cannot find fedge's pyproject\.toml"):
        default_run_config()


def test_defaults_load_and_are_typed():
    # Values come from pyproject (they change); the types are the contract.
    defaults = pyproject_defaults()

    config = from_run_config({}, fill_defaults=True)

    # "auto" learning rate and activation are resolved on load (they depend
    # only on the DP mode and clipping norm); everything else reads back as given.
    resolved = {"learning-rate", "activation"}
    flat = config.to_flat()
    assert {k: v for k, v in flat.items() if k not in resolved} == {
        k: v for k, v in defaults.items() if k not in resolved
    }
    assert from_run_config(flat) == config
    assert config.run.num_server_rounds == defaults["num-server-rounds"]
    assert config.data.dataset == defaults["dataset"]
    assert type(config.run.num_server_rounds) is int
    assert type(config.data.dirichlet_alpha) is float
    assert type(config.train.learning_rate) is float
    assert type(config.train.ema_decay) is float
    assert type(config.dp.mode) is str
    assert type(config.run.export_onnx) is bool
    assert type(config.run.node_wait_timeout_s) is float


def test_every_pyproject_key_is_a_config_key():
    assert set(CONFIG_KEYS) == set(pyproject_defaults())


def test_int_for_float_field_is_coerced_to_float():
    config = from_run_config(
        {"learning-rate": 1, "dirichlet-alpha": 2}, fill_defaults=True
    )

    assert config.train.learning_rate == 1.0
    assert type(config.train.learning_rate) is float
    assert type(config.data.dirichlet_alpha) is float


def test_overrides_replace_defaults():
    config = from_run_config(
        {"num-server-rounds": 9, "strategy": "fedprox", "proximal-mu": 0.5},
        fill_defaults=True,
    )

    assert config.run.num_server_rounds == 9
    assert config.strategy.name == "fedprox"
    assert config.strategy.proximal_mu == 0.5
    assert config.train.momentum == pyproject_defaults()["momentum"]


@pytest.mark.parametrize(
    ("strategy", "local_mu"), [("fedprox", 0.5), ("fedavg", 0.0), ("fedadam", 0.0)]
)
def test_only_fedprox_nodes_train_with_the_proximal_term(strategy, local_mu):
    config = from_run_config(
        {"strategy": strategy, "proximal-mu": 0.5}, fill_defaults=True
    )

    assert config.strategy.local_proximal_mu == local_mu


def test_config_is_frozen():
    config = from_run_config({}, fill_defaults=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.learning_rate = 1.0  # type: ignore[misc]


def test_missing_keys_without_defaults_are_reported():
    with pytest.raises(ConfigError, match=r"missing keys \[.*'dataset'"):
        from_run_config({"num-server-rounds": 3})


# ---------------------------------------------------------------- one invalid value each
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dirichlet-alpha": -0.5}, "'dirichlet-alpha' must be > 0, got -0.5"),
        ({"dirichlet-alpha": 0.0}, "'dirichlet-alpha' must be > 0, got 0.0"),
        ({"shards-per-client": 0}, "'shards-per-client' must be >= 1, got 0"),
        ({"strategy": "fedfoo"}, "'strategy' must be one of ["),
        (
            {"partitioning": "random"},
            "'partitioning' must be one of ['iid', 'dirichlet', 'shards'], got 'random'",
        ),
        (
            {"impute": "median"},
            "'impute' must be one of ['none', 'mean'], got 'median'",
        ),
        (
            {"dp-mode": "local"},
            "'dp-mode' must be one of ['none', 'sample', 'central'], got 'local'",
        ),
        (
            {"accountant": "gdp"},
            "'accountant' must be one of ['rdp', 'prv'], got 'gdp'",
        ),
        (
            {"model": "resnet"},
            "'model' must be one of ['auto', 'mlp', 'cnn', 'cnn1d', 'gru', "
            "'random-conv-linear'] or MODULE:CALLABLE (your own model), got 'resnet'",
        ),
        (
            {"augment-multiplicity": -1},
            "'augment-multiplicity' must be >= 0 (0 = off, K = views per example), "
            "got -1",
        ),
        (
            {"activation": "gelu"},
            "'activation' must be one of ['relu', 'tanh'], got 'gelu'",
        ),
        ({"local-epochs": 0}, "'local-epochs' must be >= 1 or 'auto', got 0"),
        ({"batch-size": -1}, "'batch-size' must be >= 1 or 'auto', got -1"),
        ({"learning-rate": 0.0}, "'learning-rate' must be > 0 or 'auto', got 0.0"),
        ({"momentum": 1.0}, "'momentum' must be in [0, 1), got 1.0"),
        ({"noise-multiplier": -1.0}, "'noise-multiplier' must be >= 0, got -1.0"),
        (
            {"dp-mode": "sample", "target-epsilon": 0.0},
            "'target-epsilon' must be > 0, got 0.0",
        ),
        (
            {"dp-mode": "sample", "target-delta": 1.0},
            "'target-delta' must be in [0, 1), got 1.0",
        ),
        (
            {"dp-mode": "sample", "max-grad-norm": 0.0},
            "'max-grad-norm' must be > 0, got 0.0",
        ),
        (
            {
                "dp-mode": "central",
                "noise-multiplier": 1.0,
                "clipping-norm": 0.0,
                "strategy": "fedavg",
            },
            "'clipping-norm' must be > 0, got 0.0",
        ),
        (
            {"dp-mode": "central", "noise-multiplier": 0.0, "strategy": "fedavg"},
            "'dp-mode' = 'central' needs 'noise-multiplier' > 0",
        ),
        ({"fraction-train": 0.0}, "'fraction-train' must be in (0, 1], got 0.0"),
        ({"fraction-train": 1.5}, "'fraction-train' must be in (0, 1], got 1.5"),
        (
            {"fraction-evaluate": -0.1},
            "'fraction-evaluate' must be in [0, 1], got -0.1",
        ),
        ({"min-nodes": 0}, "'min-nodes' must be >= 1, got 0"),
        ({"proximal-mu": -0.1}, "'proximal-mu' must be >= 0, got -0.1"),
        ({"server-learning-rate": 0.0}, "'server-learning-rate' must be > 0, got 0.0"),
        ({"trim-beta": 0.5}, "'trim-beta' must be in [0, 0.5), got 0.5"),
        ({"num-server-rounds": 0}, "'num-server-rounds' must be >= 1, got 0"),
        ({"checkpoint-interval": 0}, "'checkpoint-interval' must be >= 1, got 0"),
        (
            {"node-wait-timeout-s": 0.0},
            "'node-wait-timeout-s' must be > 0 seconds, got 0.0",
        ),
        ({"round-timeout-s": -1.0}, "'round-timeout-s' must be > 0 seconds, got -1.0"),
        ({"min-replies": 0}, "'min-replies' must be >= 1, got 0"),
        (
            {"max-update-norm": -1.0},
            "'max-update-norm' must be >= 0 (0 = no bound), got -1.0",
        ),
        ({"qffl-q": -1.0}, "'qffl-q' must be >= 0, got -1.0"),
        (
            {"strategy": "qfedavg", "dp-mode": "sample"},
            "'strategy' = 'qfedavg' does not compose with 'dp-mode' = 'sample'",
        ),
        (
            {"evaluate-interval": -1},
            "'evaluate-interval' must be >= 0 (0 = last round only), got -1",
        ),
        (
            {"fairness-threshold": 1.5},
            "'fairness-threshold' must be an accuracy in [0, 1], got 1.5",
        ),
        (
            {"fairness-max-clients": -1},
            "'fairness-max-clients' must be >= 0 (0 = every node), got -1",
        ),
    ],
)
def test_each_invalid_value_is_reported(overrides, message):
    with pytest.raises(ConfigError) as excinfo:
        from_run_config(overrides, fill_defaults=True)

    problems = problems_of(excinfo)
    assert len(problems) == 1, problems
    assert problems[0].startswith(message)


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(
        ConfigError,
        match=r"'strategy' must be one of \[.*'fedavg'.*'qfedavg'\], got 'fedfoo'",
    ):
        from_run_config({"strategy": "fedfoo"}, fill_defaults=True)


def test_dp_settings_are_not_checked_when_dp_is_off():
    # target-epsilon 0 is meaningless only when DP is on.
    config = from_run_config(
        {"dp-mode": "none", "target-epsilon": 0.0}, fill_defaults=True
    )
    assert config.dp.target_epsilon == 0.0


@pytest.mark.parametrize(
    ("key", "value", "kind"),
    [
        ("num-server-rounds", "5", "int"),
        ("num-server-rounds", 2.5, "int"),
        ("num-server-rounds", True, "int"),  # bool is an int subclass: refused anyway
        ("learning-rate", "0.1", "float or 'auto'"),
        ("learning-rate", False, "float or 'auto'"),
        ("batch-size", "all", "int or 'auto'"),
        ("dataset", 3, "str"),
        ("export-onnx", 1, "bool"),
        ("export-onnx", "true", "bool"),
    ],
)
def test_wrong_type_is_reported(key, value, kind):
    with pytest.raises(ConfigError) as excinfo:
        from_run_config({key: value}, fill_defaults=True)

    assert problems_of(excinfo) == [f"'{key}' must be {kind}, got {value!r}"]


def test_unknown_keys_are_reported_sorted():
    with pytest.raises(ConfigError) as excinfo:
        from_run_config({"zz-key": 1, "learning_rate": 0.1}, fill_defaults=True)

    assert problems_of(excinfo) == [
        "unknown keys ['learning_rate', 'zz-key'] "
        "(did you mean 'learning-rate' for 'learning_rate'?)"
    ]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("learning_rate", "learning-rate"),
        ("num-rounds", "num-server-rounds"),
        ("dirichlet-alfa", "dirichlet-alpha"),
        ("zzz", None),
    ],
)
def test_closest_key_names_the_key_a_typo_meant(key, expected):
    assert closest_key(key, CONFIG_KEYS) == expected


# ---------------------------------------------------------------- several at once
def test_several_range_problems_and_unknown_key_in_one_error():
    with pytest.raises(ConfigError) as excinfo:
        from_run_config(
            {
                "dirichlet-alpha": -1.0,
                "strategy": "fedfoo",
                "learning-rate": 0.0,
                "bogus": 1,
            },
            fill_defaults=True,
        )

    problems = problems_of(excinfo)
    assert str(excinfo.value).startswith("Invalid run config:")
    assert len(problems) == 4, problems
    assert "unknown keys ['bogus']" in problems
    assert "'dirichlet-alpha' must be > 0, got -1.0" in problems
    assert "'learning-rate' must be > 0 or 'auto', got 0.0" in problems
    assert any(p.startswith("'strategy' must be one of") for p in problems)


def test_several_type_problems_in_one_error():
    with pytest.raises(ConfigError) as excinfo:
        from_run_config(
            {"num-server-rounds": "five", "batch-size": 3.5, "export-onnx": "no"},
            fill_defaults=True,
        )

    assert sorted(problems_of(excinfo)) == sorted(
        [
            "'num-server-rounds' must be int, got 'five'",
            "'batch-size' must be int or 'auto', got 3.5",
            "'export-onnx' must be bool, got 'no'",
        ]
    )


def test_type_problem_and_range_problem_reported_together():
    with pytest.raises(ConfigError) as excinfo:
        from_run_config(
            {"num-server-rounds": "five", "dirichlet-alpha": -1.0}, fill_defaults=True
        )

    problems = problems_of(excinfo)
    assert "'num-server-rounds' must be int, got 'five'" in problems
    assert "'dirichlet-alpha' must be > 0, got -1.0" in problems


# ---------------------------------------------------------------- cross-field rules
@pytest.mark.parametrize(
    "strategy", ["krum", "multikrum", "bulyan", "fedmedian", "fedtrimmedavg"]
)
def test_central_dp_with_robust_aggregator_is_refused_with_reason(strategy):
    with pytest.raises(ConfigError) as excinfo:
        from_run_config(
            {"dp-mode": "central", "noise-multiplier": 1.0, "strategy": strategy},
            fill_defaults=True,
        )

    (problem,) = problems_of(excinfo)
    assert (
        f"'dp-mode' = 'central' does not compose with 'strategy' = '{strategy}'"
        in problem
    )
    assert "sensitivity of a mean" in problem
    assert "use fedavg" in problem


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedadam"])
def test_central_dp_with_mean_aggregator_is_accepted(strategy):
    config = from_run_config(
        {"dp-mode": "central", "noise-multiplier": 1.0, "strategy": strategy},
        fill_defaults=True,
    )
    assert config.dp.mode == "central"
    assert config.strategy.name == strategy


def test_sample_dp_with_krum_is_accepted():
    # Only central DP depends on the aggregator being a mean.
    config = from_run_config(
        {"dp-mode": "sample", "strategy": "krum"}, fill_defaults=True
    )
    assert config.strategy.name == "krum"


def test_file_dataset_without_eval_data_path_is_refused():
    with pytest.raises(ConfigError) as excinfo:
        from_run_config({"dataset": "file"}, fill_defaults=True)

    (problem,) = problems_of(excinfo)
    assert problem.startswith("'dataset' = 'file' needs 'eval-data-path'")


def test_file_dataset_with_eval_data_path_is_accepted():
    config = from_run_config(
        {"dataset": "file", "eval-data-path": "ref.csv"}, fill_defaults=True
    )
    assert config.data.eval_data_path == "ref.csv"


# ---------------------------------------------------------------- serialisation
def test_to_flat_round_trips_to_an_equal_config():
    original = from_run_config(
        {
            "num-server-rounds": 7,
            "dirichlet-alpha": 0.1,
            "strategy": "fedtrimmedavg",
            "trim-beta": 0.3,
            "dp-mode": "sample",
            "export-onnx": True,
            "run-name": "x",
        },
        fill_defaults=True,
    )

    # Without fill_defaults: to_flat must hold every key by itself.
    rebuilt = from_run_config(original.to_flat())

    assert rebuilt == original
    assert isinstance(rebuilt, RunConfig)


def test_the_nested_shape_old_run_folders_saved_reads_back_as_flat():
    config = from_run_config({"proximal-mu": 0.25}, fill_defaults=True)
    # The shape config.json and checkpoints held before the flat one: each
    # section's fields by attribute name.
    nested = {
        "data": {"dataset": "digits", "partition_seed": 7},
        "strategy": {"proximal_mu": 0.25, "name": "fedprox"},
        "dp": {"mode": "sample"},
    }

    flat = flat_from_nested(nested)

    assert flat == {
        "dataset": "digits",
        "partition-seed": 7,
        "proximal-mu": 0.25,
        "strategy": "fedprox",
        "dp-mode": "sample",
    }
    # A whole config's nested form rebuilds the same config.
    whole = {
        section: dict(vars(getattr(config, section)))
        for section in ("data", "train", "dp", "strategy", "run", "report")
    }
    assert from_run_config(flat_from_nested(whole)) == config

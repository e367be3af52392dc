"""``fedge simulate`` argument handling: overrides, scenarios and preflight.

Nothing here starts Flower: only the parsing and checking that come first.
"""

import pytest

from fedge.cli.app import build_parser
from fedge.cli.simulate import resolve_arguments
from fedge.shared.config import from_run_config
from fedge.shared.errors import DataError, FedgeError
from fedge.simulations.scenario_file import load_scenario
from fedge.simulations.simulate import preflight


def parse(*argv):
    return build_parser("simulate").parse_args(["simulate", *argv])


# ---------------------------------------------------------------- --set
@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("key=3", 3),
        ("key=-2", -2),
        ("key=0.25", 0.25),
        ("key=1e-3", 1e-3),
        ("key=true", True),
        ("key=abc", "abc"),
        ('key="3"', "3"),  # quoted: a string, as in TOML
        ("key=fed avg", "fed avg"),
        ("key=", ""),
        ("key=a=b", "a=b"),  # only the first '=' separates
        (" key = 3 ", 3),
    ],
)
def test_set_values_parse_as_toml_or_bare_strings(setting, expected):
    overrides = resolve_arguments(parse("--set", setting)).overrides

    assert overrides == {"key": expected}
    assert type(overrides["key"]) is type(expected)


def test_set_without_equals_is_refused():
    with pytest.raises(FedgeError, match=r"--set expects KEY=VALUE, got 'rounds'"):
        resolve_arguments(parse("--set", "rounds"))


def test_set_is_repeatable_and_the_last_one_wins():
    overrides = resolve_arguments(
        parse("--set", "a=1", "--set", "b=x", "--set", "a=2")
    ).overrides

    assert overrides == {"a": 2, "b": "x"}


def test_named_flags_map_to_run_config_keys():
    overrides = resolve_arguments(
        parse(
            "--rounds",
            "4",
            "--dataset",
            "breast-cancer",
            "--partitioning",
            "dirichlet",
            "--alpha",
            "0.3",
            "--strategy",
            "fedprox",
            "--dp-mode",
            "sample",
            "--target-epsilon",
            "2",
        )
    ).overrides

    assert overrides == {
        "num-server-rounds": 4,
        "dataset": "breast-cancer",
        "partitioning": "dirichlet",
        "dirichlet-alpha": 0.3,
        "strategy": "fedprox",
        "dp-mode": "sample",
        "target-epsilon": 2.0,
    }
    # Each is a valid key of the right type.
    from_run_config(overrides, fill_defaults=True)


def test_no_flags_means_no_overrides():
    assert resolve_arguments(parse()).overrides == {}


# ---------------------------------------------------------------- scenarios
def test_scenario_toml_is_read(tmp_path):
    scenario = tmp_path / "noniid.toml"
    scenario.write_text(
        'partitioning = "dirichlet"\ndirichlet-alpha = 0.1\nnum-server-rounds = 3\n'
    )

    assert load_scenario(scenario) == {
        "partitioning": "dirichlet",
        "dirichlet-alpha": 0.1,
        "num-server-rounds": 3,
    }


def test_flags_override_the_scenario_and_set_overrides_both(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text('strategy = "krum"\nnum-server-rounds = 3\nbatch-size = 8\n')

    overrides = resolve_arguments(
        parse(
            "--scenario",
            str(scenario),
            "--strategy",
            "fedavg",
            "--rounds",
            "6",
            "--set",
            "num-server-rounds=9",
        )
    ).overrides

    assert overrides == {"strategy": "fedavg", "num-server-rounds": 9, "batch-size": 8}


def test_missing_scenario_is_a_fedge_error(tmp_path):
    missing = tmp_path / "nope.toml"

    with pytest.raises(FedgeError, match=r"scenario .*nope\.toml"):
        load_scenario(missing)


def test_invalid_scenario_toml_is_a_fedge_error(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("strategy = \n")

    with pytest.raises(
        FedgeError, match=r"scenario file .*broken.toml is not valid TOML"
    ):
        load_scenario(broken)


def test_missing_scenario_via_flags_is_a_fedge_error(tmp_path):
    with pytest.raises(FedgeError, match=r"scenario .*gone\.toml"):
        resolve_arguments(parse("--scenario", str(tmp_path / "gone.toml")))


# ---------------------------------------------------------------- preflight
def config(**overrides):
    return from_run_config(overrides, fill_defaults=True)


def test_preflight_accepts_a_sound_setup():
    preflight(config(**{"min-nodes": 2}), num_clients=3)


def test_preflight_refuses_zero_clients():
    with pytest.raises(FedgeError, match=r"--clients must be >= 1, got 0"):
        preflight(config(**{"min-nodes": 1}), num_clients=0)


def test_preflight_refuses_more_min_nodes_than_clients():
    with pytest.raises(
        FedgeError, match=r"'min-nodes' = 5 exceeds --clients 3; the run would wait"
    ):
        preflight(config(**{"min-nodes": 5}), num_clients=3)


def test_preflight_refuses_more_clients_than_examples():
    # breast-cancer's train split has 427 rows.
    with pytest.raises(DataError):
        preflight(config(dataset="breast-cancer", **{"min-nodes": 1}), num_clients=500)


def test_preflight_refuses_a_missing_eval_file(tmp_path):
    missing = tmp_path / "ref.csv"

    with pytest.raises(DataError, match=r"data file not found: .*ref\.csv"):
        preflight(
            config(dataset="file", **{"eval-data-path": str(missing), "min-nodes": 1}),
            num_clients=2,
        )


@pytest.mark.parametrize(
    ("overrides", "num_clients"),
    [
        # Dirichlet: a draw with a 1-example partition exists, none with >= 2.
        (
            {"partitioning": "dirichlet", "dirichlet-alpha": 0.1, "partition-seed": 42},
            10,
        ),
        # IID: 427 rows over 300 clients leaves partitions of one example.
        ({"partitioning": "iid"}, 300),
    ],
)
def test_preflight_refuses_partitions_a_node_cannot_use(overrides, num_clients):
    # Every node needs >= 2 examples (client/node_data.py); preflight must
    # refuse what the nodes would refuse, before anything starts.
    with pytest.raises(FedgeError):
        preflight(
            config(dataset="breast-cancer", **{"min-nodes": 1}, **overrides),
            num_clients=num_clients,
        )


def test_simulate_refuses_a_folder_holding_an_earlier_run(tmp_path, no_flower):
    import fedge.simulations.simulate as sim
    from fedge.shared.errors import ConfigError

    earlier = tmp_path / "done"
    earlier.mkdir()
    (earlier / "metrics.csv").write_text("round\n0\n")
    (earlier / "status.json").write_text(
        '{"state": "complete", "final_accuracy": 0.99}'
    )
    with pytest.raises(ConfigError, match="already holds a run"):
        sim.simulate(
            {},
            num_clients=2,
            output_dir=tmp_path,
            run_name="done",
            echo=lambda *_: None,
        )


# ------------------------------------------------- starting model, own data
def _own_data_start(tmp_path, trainable):
    """A --data run's config before its held-out file exists, and its preprocessing."""
    import pandas as pd
    import torch

    from fedge.shared.models import build_model, default_spec
    from fedge.shared.preprocessing import fit_preprocessing

    weights = tmp_path / "backbone.pt"
    torch.save(
        build_model(default_spec("mlp", (2,), 2), model_seed=1).state_dict(), weights
    )
    run_config = config(
        dataset="file",
        model="mlp",
        trainable=trainable,
        **{
            "initial-weights": str(weights),
            # As simulate() names it: written only after the checks pass.
            "eval-data-path": str(tmp_path / "data" / "central-test.csv"),
        },
    )
    frame = pd.DataFrame(
        {"a": [0.0, 1.0, 2.0], "b": [1.0, 0.0, 1.0], "label": [0, 1, 0]}
    )
    return run_config, fit_preprocessing(frame, label_column="label")


def test_starting_model_of_own_data_is_checked_on_the_given_preprocessing(tmp_path):
    from fedge.simulations.simulate import check_starting_model

    run_config, preprocessing = _own_data_start(tmp_path, "net.5.*")

    check_starting_model(run_config, preprocessing)  # reads no held-out file

    with pytest.raises(DataError, match=r"data file not found: .*central-test\.csv"):
        check_starting_model(run_config)


def test_starting_model_of_own_data_still_refuses_a_glob_matching_nothing(tmp_path):
    from fedge.shared.errors import ConfigError
    from fedge.simulations.simulate import check_starting_model

    run_config, preprocessing = _own_data_start(tmp_path, "head.*")

    with pytest.raises(ConfigError, match=r"'trainable' pattern\(s\) \['head.\*'\]"):
        check_starting_model(run_config, preprocessing)

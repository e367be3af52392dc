"""The privacy–utility study's plumbing: settings, cells, arguments, the table.

No simulation runs here: :func:`run_study` gets a stand-in for ``simulate`` that
writes the files a finished run leaves.
"""

import json
import math

import pytest

from shared.config import from_run_config
from shared.errors import ConfigError, DataError, FedgeError
from simulations import privacy_utility as pu
from simulations.simulate import preflight
from tests.simulations.finished_run import write_run


# ---------------------------------------------------------------- settings
@pytest.mark.parametrize("num_clients", pu.CLIENT_COUNTS)
@pytest.mark.parametrize("epsilon", pu.EPSILONS)
def test_every_cell_validates_and_fits_its_federation(num_clients, epsilon):
    overrides = pu.cell_overrides(pu.study_settings(num_clients), epsilon)

    config = from_run_config(overrides, fill_defaults=True)
    preflight(config, num_clients)


@pytest.mark.parametrize("num_clients", pu.CLIENT_COUNTS)
def test_tuned_scenarios_are_sample_level_dp_on_iid_digits_at_8(num_clients):
    settings = pu.study_settings(num_clients)

    assert settings["dp-mode"] == "sample"
    assert settings["partitioning"] == "iid"
    assert settings.get("dataset", "digits") == "digits"
    assert settings["target-epsilon"] == 8.0


def test_quick_shortens_the_schedule_and_keeps_the_rest():
    full = pu.study_settings(3)
    quick = pu.study_settings(3, quick=True)

    assert quick["num-server-rounds"] == 2
    assert quick["local-epochs"] == 1
    assert {k: v for k, v in quick.items() if k not in pu.QUICK_SETTINGS} == {
        k: v for k, v in full.items() if k not in pu.QUICK_SETTINGS
    }


def test_settings_for_an_untuned_size_are_refused():
    with pytest.raises(
        FedgeError,
        match=r"No tuned settings for 7 clients: the study has them for 3, 10 "
        r"\(scenarios dp-digits-3-clients, dp-digits-10-clients\)",
    ):
        pu.study_settings(7)


# ---------------------------------------------------------------- cells
def test_finite_epsilon_is_dp_sgd_at_that_budget():
    overrides = pu.cell_overrides({"batch-size": 64, "dp-mode": "none"}, 3)

    assert overrides == {"batch-size": 64, "dp-mode": "sample", "target-epsilon": 3.0}


def test_infinite_epsilon_is_the_same_run_without_dp():
    overrides = pu.cell_overrides(
        {"batch-size": 64, "dp-mode": "sample", "target-epsilon": 8.0}, math.inf
    )

    assert overrides["dp-mode"] == "none"
    assert overrides["batch-size"] == 64


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan])
def test_cell_refuses_a_non_positive_epsilon(bad):
    with pytest.raises(ConfigError, match=r"target ε must be > 0 or inf, got"):
        pu.cell_overrides({}, bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", 1.0), ("0.5", 0.5), ("8", 8.0), ("inf", math.inf), ("None", math.inf)],
)
def test_parse_epsilon(text, expected):
    assert pu.parse_epsilon(text) == expected


@pytest.mark.parametrize("text", ["0", "-3", "eight", "", "nan"])
def test_parse_epsilon_refuses(text):
    with pytest.raises(ConfigError, match=r"ε must be a number > 0, or inf / none"):
        pu.parse_epsilon(text)


# ---------------------------------------------------------------- arguments
def test_defaults_are_the_full_study():
    args = pu.build_parser().parse_args([])

    assert args.clients == [3, 10]
    assert args.epsilons == [1.0, 3.0, 8.0, math.inf]
    assert not args.quick
    assert pu.table_path(args) == pu.TABLE_PATH


def test_quick_or_partial_runs_leave_the_committed_table_alone(tmp_path):
    parser = pu.build_parser()

    assert pu.table_path(parser.parse_args(["--quick"])) is None
    assert pu.table_path(parser.parse_args(["--clients", "3"])) is None
    assert pu.table_path(parser.parse_args(["--epsilons", "8", "inf"])) is None
    # Same cells in another order is still the full study.
    assert (
        pu.table_path(parser.parse_args(["--epsilons", "inf", "8", "3", "1"]))
        == pu.TABLE_PATH
    )
    explicit = tmp_path / "t.md"
    assert pu.table_path(parser.parse_args(["--quick", "--table", str(explicit)])) == (
        explicit
    )


def test_bad_epsilon_argument_exits_2_with_the_reason(capsys):
    with pytest.raises(SystemExit) as e:
        pu.build_parser().parse_args(["--epsilons", "8", "-1"])

    assert e.value.code == 2
    assert "ε must be a number > 0, or inf / none for no DP; got '-1'" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("text", ["5", "0", "-3", "three"])
def test_untuned_client_count_argument_exits_2(capsys, text):
    with pytest.raises(SystemExit) as e:
        pu.build_parser().parse_args(["--clients", text])

    assert e.value.code == 2
    assert f"tuned settings for [3, 10] clients, got {text!r}" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("cell", "text"),
    [
        ({"state": "complete", "noise_multiplier": 3.0542}, "3.05"),
        ({"state": "complete", "noise_multiplier": None}, "0"),
        ({"state": "failed"}, "—"),
        (None, "—"),
    ],
)
def test_format_sigma(cell, text):
    assert pu.format_sigma(cell) == text


# ---------------------------------------------------------------- the study
def fake_simulate(accuracies, calls, outputs=None):
    """A stand-in for simulate(): a finished run with a chosen accuracy."""
    outputs = [] if outputs is None else outputs

    def run(overrides, *, num_clients, output_dir, run_name, echo):
        calls.append((num_clients, dict(overrides), run_name))
        outputs.append(output_dir)
        dp = overrides["dp-mode"] == "sample"
        key = (num_clients, overrides.get("target-epsilon") if dp else math.inf)
        if accuracies[key] is None:
            raise DataError(f"run {run_name} did not complete")
        budget = overrides.get("target-epsilon")
        return write_run(
            output_dir / run_name,
            accuracy=accuracies[key],
            epsilons=[budget - 0.01 if dp else None] * num_clients,
            examples=[1212 // num_clients] * num_clients,
        )

    return run


def test_study_runs_every_cell_in_order_and_the_table_shows_them(tmp_path):
    accuracies = {
        (3, 1.0): 0.61,
        (3, 8.0): 0.94,
        (3, math.inf): 0.98,
        (10, 1.0): 0.3,
        (10, 8.0): None,  # this run fails; the study goes on
        (10, math.inf): 0.97,
    }
    calls, outputs = [], []

    results = pu.run_study(
        client_counts=[3, 10],
        epsilons=[1.0, 8.0, math.inf],
        output_dir=tmp_path,
        study_name="s1",
        simulate_fn=fake_simulate(accuracies, calls, outputs),
        echo=lambda _: None,
    )
    table = pu.build_table(json.loads(json.dumps(results)))  # as read back from disk

    assert [(n, name) for n, _, name in calls] == [
        (3, "3c-eps1"),
        (3, "3c-eps8"),
        (3, "3c-epsinf"),
        (10, "10c-eps1"),
        (10, "10c-eps8"),
        (10, "10c-epsinf"),
    ]
    assert all(out == tmp_path / "s1" for out in outputs)
    assert results["cells"][0]["run_dir"] == str(tmp_path / "s1" / "3c-eps1")
    assert calls[0][1]["target-epsilon"] == 1.0
    assert calls[2][1]["dp-mode"] == "none"
    assert calls[3][1] == pu.cell_overrides(pu.study_settings(10), 1.0)
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0] == "| clients | examples per client | ε = 1 | ε = 8 | no DP |"
    assert rows[1] == "| 3 | 404 | 0.610 (ε 0.99) | 0.940 (ε 7.99) | 0.980 |"
    assert rows[2] == "| 10 | 121 | 0.300 (ε 0.99) | failed | 0.970 |"
    assert rows[3:] == [
        "| clients | ε = 1 | ε = 8 | no DP |",
        "| 3 | 1.50 | 1.50 | 0 |",
        "| 10 | 1.50 | — | 0 |",
    ]
    assert "Quick run" not in table
    assert "- 3 clients, scenario `dp-digits-3-clients`: num-server-rounds = " in table
    assert "- 10 clients, scenario `dp-digits-10-clients`: " in table


def test_quick_study_says_so_and_runs_the_short_schedule(tmp_path):
    accuracies = {(3, 8.0): 0.5}
    calls = []

    results = pu.run_study(
        client_counts=[3],
        epsilons=[8.0],
        quick=True,
        output_dir=tmp_path,
        simulate_fn=fake_simulate(accuracies, calls),
        echo=lambda _: None,
    )

    assert calls[0][1]["num-server-rounds"] == 2
    assert calls[0][1]["local-epochs"] == 1
    assert "**Quick run** (num-server-rounds = 2, local-epochs = 1)" in (
        pu.build_table(results)
    )


def test_missing_cell_shows_a_dash():
    results = {
        "epsilons": [8.0, "inf"],
        "client_counts": [3],
        "settings": {"3": {}},
        "cells": [
            {
                "clients": 3,
                "target_epsilon": "inf",
                "state": "complete",
                "accuracy": 0.975,
                "epsilon": None,
                "examples_per_client": 404,
            }
        ],
    }

    rows = [
        line for line in pu.build_table(results).splitlines() if line.startswith("| ")
    ]

    assert rows[1] == "| 3 | 404 | — | 0.975 |"
    assert rows[3] == "| 3 | — | 0 |"


def test_a_study_never_reuses_a_folder(tmp_path):
    # A run folder that already holds a run is refused by the server, and its
    # old status.json would pass for the new run's.
    (tmp_path / "s1").mkdir()

    with pytest.raises(FedgeError, match=r"Study folder .*s1 already exists"):
        pu.run_study(
            client_counts=[3],
            epsilons=[8.0],
            output_dir=tmp_path,
            study_name="s1",
            simulate_fn=fake_simulate({}, []),
            echo=lambda _: None,
        )


def test_studies_without_a_name_get_separate_folders(tmp_path, monkeypatch):
    stamps = iter(["20260101-000000", "20260101-000001"])
    monkeypatch.setattr(pu, "default_study_name", lambda: next(stamps))
    accuracies = {(3, 8.0): 0.9}

    first = pu.run_study(
        client_counts=[3],
        epsilons=[8.0],
        output_dir=tmp_path,
        simulate_fn=fake_simulate(accuracies, []),
        echo=lambda _: None,
    )
    second = pu.run_study(
        client_counts=[3],
        epsilons=[8.0],
        output_dir=tmp_path,
        simulate_fn=fake_simulate(accuracies, []),
        echo=lambda _: None,
    )

    assert first["study_dir"] == str(tmp_path / "20260101-000000")
    assert second["study_dir"] == str(tmp_path / "20260101-000001")

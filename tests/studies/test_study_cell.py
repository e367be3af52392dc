"""One study cell: reading a finished run's figures, formatting them, running it."""

import math

import pytest

from fedge.shared.errors import DataError
from fedge.studies import study_cell
from tests.studies.finished_run import write_run


def test_epsilon_labels():
    assert study_cell.epsilon_label(3.0) == "ε = 3"
    assert study_cell.epsilon_label(0.5) == "ε = 0.5"
    assert study_cell.epsilon_label(math.inf) == "no DP"


def test_slugs_name_run_folders():
    assert study_cell.epsilon_slug(3.0) == "eps3"
    assert study_cell.epsilon_slug(0.5) == "eps0.5"
    assert study_cell.epsilon_slug(math.inf) == "epsinf"


def test_read_cell_takes_the_last_rounds_largest_epsilon(tmp_path):
    run_dir = write_run(
        tmp_path / "r",
        accuracy=0.9,
        epsilons=[2.5, 2.75, 2.25],
        examples=[121, 120, 122],
    )

    cell = study_cell.read_cell(run_dir)

    assert cell["accuracy"] == 0.9
    assert cell["epsilon"] == 2.75
    assert cell["delta"] == 1e-3
    assert cell["noise_multiplier"] == 1.5
    assert cell["examples_per_client"] == 120
    assert cell["state"] == "complete"


def test_read_cell_without_dp_has_no_epsilon(tmp_path):
    run_dir = write_run(
        tmp_path / "r", accuracy=0.97, epsilons=[None, None], examples=[404, 404]
    )

    cell = study_cell.read_cell(run_dir)

    assert cell["epsilon"] is None
    assert cell["delta"] is None


@pytest.mark.parametrize(
    ("cell", "text"),
    [
        ({"state": "complete", "accuracy": 0.9213, "epsilon": 7.994}, "0.921 (ε 7.99)"),
        ({"state": "complete", "accuracy": 0.97, "epsilon": None}, "0.970"),
        ({"state": "failed", "accuracy": None}, "failed"),
        (None, "—"),
    ],
)
def test_format_cell(cell, text):
    assert study_cell.format_cell(cell) == text


def test_a_cell_that_fails_is_recorded_and_the_study_goes_on(tmp_path):
    def failing(overrides, *, num_clients, output_dir, run_name, echo):
        raise DataError(f"{run_name}: partition 2 holds no examples")

    cell = study_cell.run_cell(
        {"dp-mode": "none"},
        num_clients=3,
        output_dir=tmp_path,
        name="3c-epsinf",
        simulate_fn=failing,
    )

    assert cell["state"] == "failed"
    assert cell["accuracy"] is None
    assert cell["error"] == "3c-epsinf: partition 2 holds no examples"
    assert study_cell.format_cell(cell) == "failed"
    assert study_cell.cell_summary(cell).endswith(
        "(3c-epsinf: partition 2 holds no examples)"
    )


def test_a_cell_that_finishes_reads_its_run_folder(tmp_path):
    seen = []

    def finishing(overrides, *, num_clients, output_dir, run_name, echo):
        seen.append((dict(overrides), num_clients, output_dir, run_name))
        return write_run(
            output_dir / run_name, accuracy=0.9, epsilons=[7.5, 7.9], examples=[5, 6]
        )

    cell = study_cell.run_cell(
        {"dp-mode": "sample"},
        num_clients=2,
        output_dir=tmp_path,
        name="2c-eps8",
        simulate_fn=finishing,
    )

    assert seen == [({"dp-mode": "sample"}, 2, tmp_path, "2c-eps8")]
    assert cell["run_dir"] == str(tmp_path / "2c-eps8")
    assert study_cell.format_cell(cell) == "0.900 (ε 7.90)"
    assert cell["wall_time_s"] >= 0


@pytest.mark.parametrize(
    ("values", "text"),
    [([0.5], "0.500"), ([0.6, 0.8, 0.7], "0.700 (0.600–0.800)")],
)
def test_mean_and_range_over_runs(values, text):
    assert study_cell.format_mean_range(values) == text

"""The privacy–utility study's plumbing: rows, grid, runs, CSV, the table.

No simulation runs here: :func:`run_study` gets a stand-in for ``simulate`` that
writes the files a finished run leaves.
"""

import math

import pandas as pd
import pytest

from fedge.shared.config import from_run_config
from fedge.shared.errors import ConfigError, DataError, FedgeError
from fedge.simulations.scenario_file import read_scenario
from fedge.simulations.simulate import preflight
from fedge.studies import privacy_utility as pu
from fedge.studies import privacy_utility_grid as grid
from fedge.studies import privacy_utility_table as table
from tests.studies.finished_run import write_run


# ---------------------------------------------------------------- rows
@pytest.mark.parametrize("row", pu.ROWS)
def test_every_row_is_a_scenario_file_that_parses(row):
    scenario = read_scenario(pu.row_scenario(row))

    assert scenario.path.parent == grid.ROW_SCENARIOS_DIR
    assert scenario.description
    assert scenario.overrides["dp-mode"] == ("none" if row == "no-dp" else "sample")


@pytest.mark.parametrize("run", pu.plan_runs(seeds=[1]), ids=lambda r: r.name)
def test_every_run_of_the_grid_validates_and_fits_its_federation(run):
    config = from_run_config(pu.run_overrides(run), fill_defaults=True)

    preflight(config, pu.DATASETS[run.dataset].clients)


def test_old_settings_are_the_defaults_before_the_dp_rule():
    # pyproject.toml before the rule: relu, batch 32, 5 epochs, lr 0.05.
    settings = read_scenario(pu.row_scenario("old-settings")).overrides

    assert settings == {
        "dp-mode": "sample",
        "activation": "relu",
        "batch-size": 32,
        "local-epochs": 5,
        "learning-rate": 0.05,
    }


def test_defaults_row_sets_only_dp_mode():
    assert read_scenario(pu.row_scenario("defaults")).overrides == {"dp-mode": "sample"}


def test_best_row_is_the_three_techniques_of_their_own_rows():
    def extra(row):
        settings = read_scenario(pu.row_scenario(row)).overrides
        return {k: v for k, v in settings.items() if k != "dp-mode"}

    best = extra("best")

    assert best == {**extra("ema"), **extra("augment"), **extra("fixed-features")}
    assert set(best) == {"ema-decay", "augment-multiplicity", "model"}


def test_unknown_row_is_refused():
    with pytest.raises(FedgeError, match=r"Unknown study row 'fast': the rows are"):
        pu.row_scenario("fast")


# ---------------------------------------------------------------- the grid
def test_full_grid_is_every_dp_row_at_every_epsilon_and_no_dp_once():
    runs = pu.plan_runs()

    # 4 data sets x (6 DP rows x 3 ε + no DP) x 3 seeds
    assert len(runs) == 4 * (6 * 3 + 1) * 3 == 228
    assert len({r.name for r in runs}) == 228
    no_dp = [r for r in runs if r.row == "no-dp"]
    assert len(no_dp) == 12
    assert all(math.isinf(r.target_epsilon) for r in no_dp)
    assert {r.target_epsilon for r in runs if r.row != "no-dp"} == {1.0, 3.0, 8.0}


def test_grid_goes_data_set_by_data_set_row_by_row():
    runs = pu.plan_runs(
        datasets=["basic-motions"], rows=["defaults", "no-dp"], epsilons=[8.0, 1.0]
    )

    assert [r.name for r in runs] == [
        "basic-motions-defaults-eps8-seed0",
        "basic-motions-defaults-eps8-seed1",
        "basic-motions-defaults-eps8-seed2",
        "basic-motions-defaults-eps1-seed0",
        "basic-motions-defaults-eps1-seed1",
        "basic-motions-defaults-eps1-seed2",
        "basic-motions-no-dp-epsinf-seed0",
        "basic-motions-no-dp-epsinf-seed1",
        "basic-motions-no-dp-epsinf-seed2",
    ]


def test_goals_only_keeps_the_goal_cells_and_no_dp():
    runs = pu.plan_runs(rows=["defaults", "no-dp"], seeds=[0], goals_only=True)

    assert [r.name for r in runs] == [
        "digits-3-defaults-eps3-seed0",
        "digits-3-no-dp-epsinf-seed0",
        "digits-10-defaults-eps8-seed0",
        "digits-10-no-dp-epsinf-seed0",
        "basic-motions-defaults-eps8-seed0",
        "basic-motions-no-dp-epsinf-seed0",
        "pickup-gesture-defaults-eps8-seed0",
        "pickup-gesture-no-dp-epsinf-seed0",
    ]


def test_a_run_is_its_row_with_its_data_set_epsilon_and_seed():
    overrides = pu.run_overrides(pu.StudyRun("pickup-gesture", "ema", 3.0, 2))

    assert overrides == {
        "dp-mode": "sample",
        "ema-decay": 0.9,
        "dataset": "pickup-gesture",
        "partitioning": "dirichlet",
        "dirichlet-alpha": 0.5,
        "model-seed": 2,
        "sampler-seed": 2,
        "target-epsilon": 3.0,
    }


def test_no_dp_run_sets_no_budget_and_quick_shortens_the_run():
    overrides = pu.run_overrides(
        pu.StudyRun("digits-10", "no-dp", math.inf, 0), quick=True
    )

    assert overrides["dp-mode"] == "none"
    assert "target-epsilon" not in overrides
    assert overrides["num-server-rounds"] == 2
    assert overrides["partitioning"] == "iid"


def test_a_dp_row_needs_a_finite_epsilon_and_no_dp_none():
    with pytest.raises(ConfigError, match=r"Row 'best' trains with DP-SGD: its ε"):
        pu.run_overrides(pu.StudyRun("digits-3", "best", math.inf, 0))
    with pytest.raises(ConfigError, match=r"Row 'no-dp' trains without DP: its ε"):
        pu.run_overrides(pu.StudyRun("digits-3", "no-dp", 8.0, 0))


def test_reproduce_command_names_the_row_file_and_the_run_flags():
    assert table.reproduce_command("best", "basic-motions", 8.0, seed=1) == (
        "fedge simulate --scenario simulations/scenarios/privacy-utility/best.toml "
        "--dataset basic-motions --clients 4 --partitioning dirichlet --alpha 0.5 "
        "--target-epsilon 8 --set model-seed=1 --set sampler-seed=1"
    )
    assert table.reproduce_command("no-dp", "digits-3", math.inf) == (
        "fedge simulate --scenario simulations/scenarios/privacy-utility/no-dp.toml "
        "--dataset digits --clients 3 --set model-seed=0 --set sampler-seed=0"
    )


@pytest.mark.parametrize(("text", "expected"), [("1", 1.0), ("0.5", 0.5), ("8", 8.0)])
def test_parse_epsilon(text, expected):
    assert pu.parse_epsilon(text) == expected


@pytest.mark.parametrize("text", ["0", "-3", "eight", "", "nan", "inf"])
def test_parse_epsilon_refuses(text):
    with pytest.raises(ConfigError, match=r"ε must be a number > 0 \(the no-dp row"):
        pu.parse_epsilon(text)


# ---------------------------------------------------------------- arguments
def test_defaults_are_the_full_study():
    args = pu.build_parser().parse_args([])

    assert args.datasets == list(pu.DATASETS)
    assert args.rows == list(pu.ROWS)
    assert args.epsilons == [1.0, 3.0, 8.0]
    assert args.seeds == [0, 1, 2]
    assert not args.goals
    assert pu.output_paths(args) == (pu.RESULTS_PATH, pu.TABLE_PATH)


def test_quick_writes_its_own_files(tmp_path):
    parser = pu.build_parser()

    results, table = pu.output_paths(parser.parse_args(["--quick"]))
    assert results.name == "privacy_utility-quick.csv"
    assert table.name == "privacy_utility-quick.md"
    given = parser.parse_args(["--quick", "--table", str(tmp_path / "t.md")])
    assert pu.output_paths(given)[1] == tmp_path / "t.md"


def test_bad_epsilon_argument_exits_2_with_the_reason(capsys):
    with pytest.raises(SystemExit) as e:
        pu.build_parser().parse_args(["--epsilons", "8", "-1"])

    assert e.value.code == 2
    assert "ε must be a number > 0" in capsys.readouterr().err


# ---------------------------------------------------------------- mean and range
def record(dataset, row, epsilon, seed, accuracy, state="complete"):
    return {
        "dataset": dataset,
        "row": row,
        "target_epsilon": epsilon,
        "seed": seed,
        "state": state,
        "accuracy": accuracy,
        "epsilon": None if math.isinf(epsilon) else epsilon - 0.01,
    }


def test_cell_is_the_mean_and_range_of_its_seeds(tmp_path):
    frame = pu.merge_runs(
        tmp_path / "runs.csv",
        [
            record("digits-10", "defaults", 8.0, 0, 0.90),
            record("digits-10", "defaults", 8.0, 1, 0.84),
            record("digits-10", "defaults", 8.0, 2, 0.93),
            record("digits-10", "defaults", 3.0, 0, 0.5),  # another cell
        ],
    )

    summary = table.summarize(frame, "digits-10", "defaults", 8.0)

    assert summary["mean"] == pytest.approx((0.90 + 0.84 + 0.93) / 3)
    assert (summary["min"], summary["max"]) == (0.84, 0.93)
    assert table.format_table_cell(summary) == "0.890 (0.840–0.930)"


def test_a_failed_run_is_counted_not_dropped(tmp_path):
    frame = pu.merge_runs(
        tmp_path / "runs.csv",
        [
            record("basic-motions", "best", 8.0, 0, 0.75),
            record("basic-motions", "best", 8.0, 1, 0.85),
            record("basic-motions", "best", 8.0, 2, None, state="failed"),
            record("basic-motions", "ema", 8.0, 0, None, state="failed"),
        ],
    )

    assert table.format_table_cell(
        table.summarize(frame, "basic-motions", "best", 8.0)
    ) == ("0.800 (0.750–0.850), 2 runs + 1 failed")
    assert table.format_table_cell(
        table.summarize(frame, "basic-motions", "ema", 8.0)
    ) == ("failed (1 run)")
    assert table.format_table_cell(
        table.summarize(frame, "basic-motions", "ema", 1.0)
    ) == ("—")


def test_chunks_accumulate_and_a_rerun_replaces_its_run(tmp_path):
    path = tmp_path / "runs.csv"
    pu.merge_runs(path, [record("digits-3", "defaults", 3.0, 0, 0.80)])
    pu.merge_runs(path, [record("digits-3", "defaults", 3.0, 1, 0.90)])

    frame = pu.merge_runs(path, [record("digits-3", "defaults", 3.0, 0, 0.70)])

    assert sorted(zip(frame["seed"], frame["accuracy"], strict=True)) == [
        (0, 0.70),
        (1, 0.90),
    ]
    assert len(pd.read_csv(path)) == 2


def test_goal_status_says_met_or_by_how_much_it_misses(tmp_path):
    frame = pu.merge_runs(
        tmp_path / "runs.csv",
        [
            record("digits-3", "defaults", 3.0, 0, 0.90),
            record("digits-3", "defaults", 3.0, 1, 0.88),
            record("digits-3", "best", 3.0, 0, 0.93),
            record("digits-3", "best", 3.0, 1, 0.95),
            record("pickup-gesture", "defaults", 8.0, 0, 0.28),
            record("pickup-gesture", "defaults", 8.0, 1, 0.34),
            record("pickup-gesture", "defaults", 8.0, 2, 0.31),
        ],
    )

    lines = table.goal_status(frame)

    assert lines[3] == (
        "- digits-3 at ε = 3, goal ≥ 0.92: defaults (only dp-mode = sample) 0.890 "
        "over 2 run(s), missed by 0.030 so far (not decided: 2 of 3 seeds); all "
        "three 0.940 over 2 run(s), met so far (not decided: 2 of 3 seeds)"
    )
    assert lines[2] == (
        "- pickup-gesture at ε = 8, goal ≥ 0.30: defaults (only dp-mode = sample) "
        "0.310 over 3 run(s), met; all three: not run"
    )
    assert lines[0].startswith("- digits-10 at ε = 8, goal ≥ 0.94: ")
    assert lines[0].endswith("not run")


def test_table_has_a_row_per_technique_and_the_no_dp_reference(tmp_path):
    frame = pu.merge_runs(
        tmp_path / "runs.csv",
        [
            record("pickup-gesture", "defaults", 8.0, 0, 0.2),
            record("pickup-gesture", "defaults", 8.0, 1, 0.3),
            record("pickup-gesture", "no-dp", math.inf, 0, 0.4),
        ],
    )

    table = pu.build_table(frame)
    rows = [line for line in table.splitlines() if line.startswith("| ")]

    assert "## digits-3" not in table  # no run of it yet
    assert "## pickup-gesture (4 clients)" in table
    assert rows[0] == "| row | ε = 1 | ε = 3 | ε = 8 |"
    assert rows[2] == (
        "| defaults (only dp-mode = sample) | — | — | 0.250 (0.200–0.300), 2 runs |"
    )
    assert (
        rows[7] == "| no DP (defaults) | 0.400, 1 run | 0.400, 1 run | 0.400, 1 run |"
    )
    assert "`best.toml`" in table


# ---------------------------------------------------------------- the study
def fake_simulate(accuracies, calls):
    """A stand-in for simulate(): a finished run with a chosen accuracy."""

    def run(overrides, *, num_clients, output_dir, run_name, echo):
        calls.append((num_clients, dict(overrides), run_name))
        if accuracies[run_name] is None:
            raise DataError(f"run {run_name} did not complete")
        dp = overrides["dp-mode"] == "sample"
        budget = overrides.get("target-epsilon")
        return write_run(
            output_dir / run_name,
            accuracy=accuracies[run_name],
            epsilons=[budget - 0.01 if dp else None] * num_clients,
            examples=[1212 // num_clients] * num_clients,
        )

    return run


def test_study_runs_each_run_in_order_and_records_failures(tmp_path):
    runs = [
        pu.StudyRun("digits-3", "best", 3.0, 0),
        pu.StudyRun("digits-3", "best", 3.0, 1),
        pu.StudyRun("digits-10", "no-dp", math.inf, 0),
    ]
    accuracies = {
        "digits-3-best-eps3-seed0": 0.93,
        "digits-3-best-eps3-seed1": None,  # fails; the study goes on
        "digits-10-no-dp-epsinf-seed0": 0.97,
    }
    calls, saved = [], []

    records = pu.run_study(
        runs,
        output_dir=tmp_path,
        study_name="s1",
        simulate_fn=fake_simulate(accuracies, calls),
        echo=lambda _: None,
        on_run=saved.append,
    )

    assert [(n, name) for n, _, name in calls] == [
        (3, "digits-3-best-eps3-seed0"),
        (3, "digits-3-best-eps3-seed1"),
        (10, "digits-10-no-dp-epsinf-seed0"),
    ]
    assert calls[1][1] == pu.run_overrides(runs[1])
    assert saved == records
    assert records[0]["accuracy"] == 0.93
    assert records[0]["epsilon"] == pytest.approx(2.99)
    assert records[0]["run_dir"] == str(tmp_path / "s1" / "digits-3-best-eps3-seed0")
    assert records[1]["state"] == "failed"
    assert "did not complete" in records[1]["error"]
    assert records[2]["target_epsilon"] == math.inf


def test_a_study_never_reuses_a_folder(tmp_path):
    # A run folder that already holds a run is refused by the server, and its
    # old status.json would pass for the new run's.
    (tmp_path / "s1").mkdir()

    with pytest.raises(FedgeError, match=r"Study folder .*s1 already exists"):
        pu.run_study(
            [pu.StudyRun("digits-3", "defaults", 3.0, 0)],
            output_dir=tmp_path,
            study_name="s1",
            simulate_fn=fake_simulate({}, []),
            echo=lambda _: None,
        )


def test_table_only_rebuilds_the_table_from_the_csv_and_runs_nothing(
    tmp_path, monkeypatch
):
    def no_study(*_args, **_kwargs):
        raise AssertionError("--table-only ran the study")

    monkeypatch.setattr(pu, "run_study", no_study)
    results, table = tmp_path / "runs.csv", tmp_path / "t.md"
    pu.merge_runs(results, [record("digits-3", "best", 3.0, 0, 0.93)])

    code = pu.main(["--table-only", "--results", str(results), "--table", str(table)])

    assert code == 0
    assert "| all three | — | 0.930, 1 run | — |" in table.read_text()
    assert "--dataset digits --clients 3 --target-epsilon 3 " in table.read_text()


def test_goal_table_has_the_goal_cells_and_no_dp_in_each_goal_column(tmp_path):
    frame = pu.merge_runs(
        tmp_path / "runs.csv",
        [
            record("digits-3", "defaults", 3.0, 0, 0.8),
            record("digits-3", "defaults", 8.0, 0, 0.9),  # not a goal cell
            record("basic-motions", "no-dp", math.inf, 0, 1.0),
        ],
    )

    lines = table.goal_table(frame)

    assert lines[0] == (
        "| row | digits-10 (10 clients), ε = 8 | basic-motions (4 clients), ε = 8 "
        "| pickup-gesture (4 clients), ε = 8 | digits-3 (3 clients), ε = 3 |"
    )
    assert lines[2] == "| goal | ≥ 0.94 | ≥ 0.80 | ≥ 0.30 | ≥ 0.92 |"
    assert lines[4] == "| defaults (only dp-mode = sample) | — | — | — | 0.800, 1 run |"
    assert lines[-1] == "| no DP (defaults) | — | 1.000, 1 run | — | — |"


def test_goal_status_names_a_higher_row_measured_at_every_seed(tmp_path):
    frame = pu.merge_runs(
        tmp_path / "runs.csv",
        [
            *(record("digits-10", "defaults", 8.0, s, 0.83) for s in pu.SEEDS),
            *(record("digits-10", "best", 8.0, s, 0.80) for s in pu.SEEDS),
            *(record("digits-10", "fixed-features", 8.0, s, 0.92) for s in pu.SEEDS),
            # Higher, but not every seed run: not a goal's mean yet.
            record("digits-10", "ema", 8.0, 0, 0.99),
            # No DP is no candidate.
            *(record("digits-10", "no-dp", math.inf, s, 0.97) for s in pu.SEEDS),
        ],
    )

    line = table.goal_status(frame)[0]

    assert line.endswith(
        "; highest: defaults + fixed features (random-conv-linear) 0.920 over "
        "3 run(s), missed by 0.020"
    )
    assert "EMA" not in line

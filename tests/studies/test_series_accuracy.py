"""The time-series accuracy study: its grid of runs, its table, its command line."""

from __future__ import annotations

import json

import pytest

from fedge.studies import series_accuracy


def test_help_describes_the_study_and_runs_nothing(monkeypatch, capsys):
    # --help used to start the whole study (minutes of simulations).
    def refuse(*args, **kwargs):
        raise AssertionError("--help must not run the study")

    monkeypatch.setattr(series_accuracy, "run_study", refuse)

    with pytest.raises(SystemExit) as exit_info:
        series_accuracy.main(["--help"])

    assert exit_info.value.code == 0
    out = "".join(capsys.readouterr().out.split())  # argparse wraps at hyphens
    assert "basic-motions,pickup-gesture" in out
    for flag in ("--output-dir", "--seeds", "--datasets", "--model"):
        assert flag in out


def fake_run_cell(calls, accuracy=lambda overrides: 0.5, fail=()):
    """Stand in for run_cell: record each run's config, finish or fail it."""

    def run_cell(overrides, *, num_clients, output_dir, name):
        calls.append((name, overrides, num_clients, output_dir))
        if name in fail:
            return {
                "state": "failed",
                "accuracy": None,
                "error": "boom",
                "wall_time_s": 1.0,
            }
        dp = overrides["dp-mode"] == "sample"
        return {
            "state": "complete",
            "accuracy": accuracy(overrides),
            "epsilon": 7.5 + overrides["model-seed"] / 10 if dp else None,
            "wall_time_s": 1.0,
        }

    return run_cell


def test_each_cell_runs_once_per_seed_which_sets_model_and_sampler_seed(
    monkeypatch, tmp_path, capsys
):
    calls = []
    monkeypatch.setattr(series_accuracy, "run_cell", fake_run_cell(calls))

    results = series_accuracy.run_study(
        tmp_path, seeds=[4, 7], datasets=["basic-motions"], model="gru"
    )

    assert [name for name, *_ in calls] == [
        "basic-motions-gru-epsinf-seed4",
        "basic-motions-gru-epsinf-seed7",
        "basic-motions-gru-eps8-seed4",
        "basic-motions-gru-eps8-seed7",
    ]
    for name, overrides, num_clients, output_dir in calls:
        seed = int(name.rsplit("seed", 1)[1])
        assert overrides["model-seed"] == overrides["sampler-seed"] == seed
        assert overrides["model"] == "gru"
        assert overrides["dataset"] == "basic-motions"
        assert overrides["partitioning"] == "dirichlet"
        assert "partition-seed" not in overrides  # the same split in every run
        assert (num_clients, output_dir) == (4, tmp_path)
    assert [o["dp-mode"] for _, o, *_ in calls] == ["none", "none", "sample", "sample"]
    assert calls[2][1]["target-epsilon"] == 8.0
    assert [(r["seed"], r["target_epsilon"]) for r in results["runs"]] == [
        (4, None),
        (7, None),
        (4, 8.0),
        (7, 8.0),
    ]
    assert "basic-motions-gru-eps8-seed7: 0.500 (ε 8.20)" in capsys.readouterr().out


def test_a_cell_gives_mean_range_and_the_number_of_runs():
    runs = [
        {"state": "complete", "accuracy": 0.9, "epsilon": 7.5},
        {"state": "complete", "accuracy": 1.0, "epsilon": 7.99},
        {"state": "complete", "accuracy": 0.95, "epsilon": 7.9},
        {"state": "failed", "accuracy": None, "error": "boom"},
    ]

    summary = series_accuracy.summarize_cell(runs)

    assert summary["mean"] == pytest.approx(0.95)
    assert (summary["min"], summary["max"]) == (0.9, 1.0)
    assert (summary["runs"], summary["failed"]) == (3, 1)
    assert (
        series_accuracy.format_summary(summary)
        == "0.950 (0.900–1.000), 3 runs + 1 failed, ε ≤ 7.99"
    )


@pytest.mark.parametrize(
    ("runs", "text"),
    [
        ([{"state": "complete", "accuracy": 0.42, "epsilon": None}], "0.420, 1 run"),
        ([{"state": "failed", "accuracy": None}] * 2, "failed (2 runs)"),
    ],
)
def test_a_cell_of_one_run_or_none(runs, text):
    assert series_accuracy.format_summary(series_accuracy.summarize_cell(runs)) == text


def test_the_table_has_a_row_per_dataset_and_a_column_per_privacy_level(
    monkeypatch, tmp_path
):
    # Accuracy by (dataset, DP, seed), so each cell's mean and range are known.
    accuracy = {
        ("basic-motions", "none"): [1.0, 1.0, 0.9],
        ("basic-motions", "sample"): [0.5, 0.25, 0.6],
        ("pickup-gesture", "none"): [0.4, 0.44, 0.42],
        ("pickup-gesture", "sample"): [0.1, 0.1, 0.1],
    }
    monkeypatch.setattr(
        series_accuracy,
        "run_cell",
        fake_run_cell(
            [],
            accuracy=lambda o: accuracy[o["dataset"], o["dp-mode"]][o["model-seed"]],
        ),
    )

    table = series_accuracy.build_table(series_accuracy.run_study(tmp_path))

    assert table.splitlines() == [
        "| dataset | model | no DP | ε = 8 |",
        "|---|---|---|---|",
        "| basic-motions | auto | 0.967 (0.900–1.000), 3 runs "
        "| 0.450 (0.250–0.600), 3 runs, ε ≤ 7.70 |",
        "| pickup-gesture | auto | 0.420 (0.400–0.440), 3 runs "
        "| 0.100 (0.100–0.100), 3 runs, ε ≤ 7.70 |",
    ]


def test_main_writes_results_per_model_and_exits_1_if_a_run_failed(
    monkeypatch, tmp_path, capsys
):
    calls = []
    monkeypatch.setattr(
        series_accuracy,
        "run_cell",
        fake_run_cell(calls, fail={"pickup-gesture-gru-eps8-seed0"}),
    )
    monkeypatch.setattr(series_accuracy, "RESULTS_DIR", tmp_path / "results")

    code = series_accuracy.main(
        [
            "--seeds",
            "0",
            "--datasets",
            "pickup-gesture",
            "--model",
            "gru",
            "--output-dir",
            str(tmp_path / "runs"),
        ]
    )

    assert code == 1
    assert {output_dir for *_, output_dir in calls} == {tmp_path / "runs"}
    results = json.loads(
        (tmp_path / "results" / "series_accuracy-gru.json").read_text()
    )
    assert [r["state"] for r in results["runs"]] == ["complete", "failed"]
    assert results["seeds"] == [0] and results["model"] == "gru"
    assert capsys.readouterr().out.endswith(
        "| pickup-gesture | gru | 0.500, 1 run | failed (1 run) |\n"
    )
    assert series_accuracy.results_path("auto").name == "series_accuracy.json"


def test_repeated_seeds_are_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(series_accuracy, "run_study", pytest.fail)

    with pytest.raises(SystemExit) as exit_info:
        series_accuracy.main(["--seeds", "1", "1"])

    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "python -m fedge.studies.series_accuracy: error: "
        "--seeds must differ (each names a run folder), got [1, 1]"
    )

import pandas as pd
import pytest

from fedge.cli.app import main
from fedge.reports.run_comparison import compare_runs, write_comparison
from fedge.shared.errors import FedgeError


def run_folder(path, rows):
    path.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(path / "metrics.csv", index=False)
    return path


@pytest.fixture
def two_runs(tmp_path):
    fedavg = run_folder(
        tmp_path / "fedavg",
        [
            {"round": 0, "central-accuracy": 0.1},
            {"round": 1, "central-accuracy": 0.6, "client-accuracy-worst": 0.2},
        ],
    )
    dp = run_folder(
        tmp_path / "eps3",
        [
            {"round": 0, "central-accuracy": 0.1},
            {"round": 1, "central-accuracy": 0.5, "epsilon-max": 1.5},
            {"round": 2, "central-accuracy": 0.55, "epsilon-max": 3.0},
        ],
    )
    return fedavg, dp


def test_runs_are_overlaid_round_by_round(two_runs):
    table = compare_runs(two_runs)

    assert list(table.columns) == [
        "run",
        "round",
        "central-accuracy",
        "client-accuracy-worst",
        "epsilon-max",
    ]
    assert list(table["run"]) == ["fedavg"] * 2 + ["eps3"] * 3
    assert list(table["central-accuracy"]) == [0.1, 0.6, 0.1, 0.5, 0.55]
    assert table["client-accuracy-worst"].tolist()[1] == 0.2
    assert table.loc[table["run"] == "eps3", "epsilon-max"].tolist()[1:] == [1.5, 3.0]
    assert table.loc[table["run"] == "fedavg", "epsilon-max"].isna().all()


def test_the_comparison_figure_and_table_are_written(two_runs, tmp_path):
    table = compare_runs(two_runs)

    png, csv = write_comparison(table, tmp_path / "out")

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pd.testing.assert_frame_equal(pd.read_csv(csv), table)


def test_folders_of_the_same_name_are_told_apart_by_their_parent(tmp_path):
    rows = [{"round": 0, "central-accuracy": 0.1}]
    a = run_folder(tmp_path / "a" / "run", rows)
    b = run_folder(tmp_path / "b" / "run", rows)

    assert list(compare_runs([a, b])["run"]) == ["a/run", "b/run"]


def test_comparing_needs_two_distinct_runs(two_runs):
    with pytest.raises(FedgeError, match="needs at least two run folders, got 1"):
        compare_runs(two_runs[:1])
    with pytest.raises(FedgeError, match="the same run folder is named twice"):
        compare_runs([two_runs[0], two_runs[0]])


def test_fedge_report_with_several_folders_prints_the_table(two_runs, tmp_path, capsys):
    code = main(["report", *map(str, two_runs), "--out-dir", str(tmp_path / "cmp")])

    out = capsys.readouterr().out
    assert code == 0
    assert "eps3" in out and "3.0000" in out
    assert (tmp_path / "cmp" / "comparison.png").is_file()


def test_fedge_report_on_a_folder_without_metrics_is_a_one_line_error(
    two_runs, tmp_path, capsys
):
    code = main(["report", str(two_runs[0]), str(tmp_path)])

    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "has no metrics.csv" in err

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest

from fedge.server.metrics_history import (
    HistoryError,
    MetricsHistory,
    summarize_clients,
)
from fedge.shared.run_folder import METRIC_COLUMNS as COLUMNS


def row(r, **extra):
    return {"round": r, "central-loss": 1.0 / (r + 1), "replies": 2 * r, **extra}


def jsonl_rounds(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["round"] for line in lines]


def test_rows_round_trip_through_pandas(tmp_path):
    # Prepare
    h = MetricsHistory(tmp_path)
    # Execute
    h.append({"round": 0, "central-loss": 2.302585092994046, "central-accuracy": 0.1})
    h.append(
        {
            "round": 1,
            "central-loss": np.float32(0.5),
            "central-accuracy": 0.8,
            "epsilon-max": float("nan"),
            "epsilon-mean": None,
            "sampled": np.int64(3),
            "central-brier": 0.75,  # not declared: appended as a new column
        },
        details={"clients": [{"node-id": 7, "status": "aggregated", "eps": 1.5}]},
    )
    # Assert
    df = pd.read_csv(tmp_path / "metrics.csv")
    assert list(df.columns) == [*COLUMNS, "central-brier"]
    assert df["round"].tolist() == [0, 1]
    assert df["central-loss"].tolist() == [2.302585092994046, 0.5]  # exact
    assert df["sampled"].iloc[1] == 3
    assert math.isnan(df["epsilon-max"].iloc[1]) and math.isnan(
        df["epsilon-mean"].iloc[1]
    )
    assert math.isnan(df["central-brier"].iloc[0])
    assert df["central-brier"].iloc[1] == 0.75


def test_jsonl_has_one_strict_json_object_per_round(tmp_path):
    h = MetricsHistory(tmp_path)
    h.append(row(0))
    h.append(
        row(1, **{"epsilon-max": float("inf")}),
        details={"clients": [{"node-id": 7, "loss": float("nan")}]},
    )
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    second = json.loads(lines[1], parse_constant=pytest.fail)  # no NaN/Infinity
    assert second["round"] == 1 and second["replies"] == 2
    assert second["epsilon-max"] is None
    assert second["clients"] == [{"node-id": 7, "loss": None}]


def test_existing_files_are_loaded(tmp_path):
    first = MetricsHistory(tmp_path)
    for r in range(3):
        first.append(row(r, note="x" if r == 1 else None), details={"d": r})
    again = MetricsHistory(tmp_path)
    assert again.last_round() == 2
    assert [r["round"] for r in again.rows()] == [0, 1, 2]
    assert again.rows()[1] == {
        "round": 1,
        "central-loss": 0.5,
        "replies": 2,
        "note": "x",
    }
    assert [rec["d"] for rec in again.records()] == [0, 1, 2]
    assert "note" in again.columns


def test_resume_truncates_without_duplicate_or_gap(tmp_path):
    # Prepare: a run reached round 5, its last checkpoint is round 3
    h = MetricsHistory(tmp_path)
    for r in range(6):
        h.append(row(r), details={"clients": [r]})
    # Execute: the resumed process reloads, resumes at 3, runs rounds 4-5 again
    resumed = MetricsHistory(tmp_path)
    resumed.resume(3)
    assert pd.read_csv(tmp_path / "metrics.csv")["round"].tolist() == [0, 1, 2, 3]
    resumed.append(row(4, replies=99))
    resumed.append(row(5))
    # Assert
    df = pd.read_csv(tmp_path / "metrics.csv")
    assert df["round"].tolist() == [0, 1, 2, 3, 4, 5]
    assert df.loc[df["round"] == 4, "replies"].item() == 99
    assert jsonl_rounds(tmp_path) == [0, 1, 2, 3, 4, 5]


def test_resume_refills_rounds_the_files_lost_from_the_checkpoint(tmp_path, caplog):
    h = MetricsHistory(tmp_path)
    for r in range(2):
        h.append(row(r))
    backup = [row(r) for r in range(4)]  # the checkpoint saw rounds 0-3
    with caplog.at_level(logging.WARNING, logger="fedge.server.metrics_history"):
        MetricsHistory(tmp_path).resume(3, backup)
    assert pd.read_csv(tmp_path / "metrics.csv")["round"].tolist() == [0, 1, 2, 3]
    assert jsonl_rounds(tmp_path) == [0, 1, 2, 3]
    assert "Metrics of rounds [2, 3] were missing" in caplog.text


def test_crash_between_jsonl_and_csv_is_repaired(tmp_path):
    h = MetricsHistory(tmp_path)
    h.append(row(0))
    h.append(row(1))
    # a crash after the JSONL line of round 2, before the CSV was rewritten
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(row(2)) + "\n")
    resumed = MetricsHistory(tmp_path)
    assert [r["round"] for r in resumed.records()] == [0, 1]
    resumed.append(row(2, replies=7))
    assert jsonl_rounds(tmp_path) == [0, 1, 2]
    assert (
        json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[2])["replies"]
        == 7
    )


def test_torn_jsonl_line_is_dropped_with_a_warning(tmp_path, caplog):
    h = MetricsHistory(tmp_path)
    h.append(row(0))
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"round": 1, "centr')
    with caplog.at_level(logging.WARNING, logger="fedge.server.metrics_history"):
        again = MetricsHistory(tmp_path)
    assert "metrics.jsonl line 2 is not JSON" in caplog.text
    again.append(row(1))
    assert jsonl_rounds(tmp_path) == [0, 1]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"central-loss": 1.0}, r"needs an integer 'round'"),
        ({"round": 1.0}, r"needs an integer 'round'"),
        ({"round": 2}, r"round 2 is not after the last recorded round 2"),
    ],
)
def test_bad_rows_are_refused(tmp_path, bad, message):
    h = MetricsHistory(tmp_path)
    h.append(row(2))
    with pytest.raises(HistoryError, match=message):
        h.append(bad)


def test_details_may_not_shadow_columns(tmp_path):
    with pytest.raises(
        HistoryError, match=r"reuse the row's column names \['replies'\]"
    ):
        MetricsHistory(tmp_path).append(row(0), details={"replies": []})


def test_first_column_must_be_round(tmp_path):
    with pytest.raises(HistoryError, match="first column must be 'round'"):
        MetricsHistory(tmp_path, columns=["loss", "round"])


def test_summarize_clients():
    clients = [
        {"node-id": 1, "epsilon": 1.0},
        {"node-id": 2, "epsilon": 3.0, "status": "refused"},
        {"node-id": 3},
        {"node-id": 4, "epsilon": float("nan")},
    ]
    assert summarize_clients(clients, "epsilon") == (3.0, 2.0)
    assert summarize_clients([{"node-id": 1}], "epsilon") == (None, None)

import json

from fedge.shared.metrics_files import read_metrics_files, read_metrics_records


def test_rows_are_typed_back_and_joined_with_their_details(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "round,central-accuracy,strategy,resumed\n0,0.5,fedavg,False\n1,,fedavg,True\n"
    )
    lines = [
        {"round": 0, "central-accuracy": 0.5, "clients": []},
        {"round": 1, "clients": [{"node-id": 7, "epsilon": 1.5}]},
    ]
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in lines)
    )

    files = read_metrics_files(tmp_path)

    assert files is not None
    assert files.header == ["round", "central-accuracy", "strategy", "resumed"]
    assert files.rows == [
        {"round": 0, "central-accuracy": 0.5, "strategy": "fedavg", "resumed": False},
        {"round": 1, "strategy": "fedavg", "resumed": True},
    ]
    assert files.records[1] == {
        "round": 1,
        "strategy": "fedavg",
        "resumed": True,
        "clients": [{"node-id": 7, "epsilon": 1.5}],
    }
    assert files.jsonl_matches


def test_a_details_line_without_its_row_is_left_out(tmp_path, caplog):
    # A crash between the JSONL append and the CSV rewrite leaves round 1's line.
    (tmp_path / "metrics.csv").write_text("round\n0\n")
    (tmp_path / "metrics.jsonl").write_text(
        '{"round": 0}\n{"round": 1, "clients": []}\n{"round": 2\n'
    )
    bad = []

    files = read_metrics_files(tmp_path, on_bad_line=lambda n, why: bad.append(n))

    assert files is not None
    assert files.records == [{"round": 0}]
    assert not files.jsonl_matches
    assert bad == [3]
    assert "metrics.jsonl line 3 is not JSON" in caplog.text


def test_a_folder_without_metrics_has_no_rounds(tmp_path):
    assert read_metrics_files(tmp_path) is None
    assert read_metrics_records(tmp_path) == []

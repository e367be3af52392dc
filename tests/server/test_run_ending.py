"""A run that cannot continue: one line, status.json, and a failed exit for Flower."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict
from flwr.app.exception import AppExitException

from fedge.server.run_ending import QuietRunEnded, RunEnded, end_failed_run
from fedge.server.run_outcome import NothingTrainedError
from fedge.shared.config import from_run_config
from fedge.shared.errors import DataError, FedgeError


def _config(tmp_path: Path, **overrides):
    return from_run_config(
        {"output-dir": str(tmp_path), "run-name": "r", **overrides}, fill_defaults=True
    )


def test_a_failure_before_the_run_started_writes_status_and_one_line(tmp_path, caplog):
    config = _config(tmp_path)

    with caplog.at_level(logging.ERROR, logger="fedge.server.run_ending"):
        ended = end_failed_run(config, DataError("eval.csv: no column 'label'"))

    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert status["state"] == "failed"
    assert status["message"] == "DataError: eval.csv: no column 'label'"
    assert [r.getMessage() for r in caplog.records] == [
        f"run failed: eval.csv: no column 'label' (status: {tmp_path / 'r' / 'status.json'})"
    ]
    assert isinstance(ended, AppExitException)
    assert ended.exit_code == 201  # Flower records the run as failed
    assert str(ended) == caplog.records[0].getMessage()


def test_an_earlier_runs_status_is_never_overwritten(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    earlier = {"state": "complete", "message": "all 5 rounds done"}
    (run_dir / "status.json").write_text(json.dumps(earlier))

    end_failed_run(_config(tmp_path), FedgeError("already holds a run"))

    assert json.loads((run_dir / "status.json").read_text()) == earlier


def test_a_failed_run_with_checkpoints_says_how_to_resume(tmp_path):
    run_dir = tmp_path / "r"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "round-0002.pt").write_bytes(b"")
    (run_dir / "status.json").write_text(
        json.dumps({"state": "failed", "message": "RoundAbort: Only 1 of 2 nodes"})
    )

    ended = end_failed_run(_config(tmp_path), FedgeError("Only 1 of 2 nodes"))

    assert str(ended).endswith(
        "; checkpoints are kept: submit it again with resume = true"
    )


def test_a_run_that_trained_nothing_is_not_offered_a_resume(tmp_path):
    run_dir = tmp_path / "r"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "round-0002.pt").write_bytes(b"")
    reason = "no round aggregated an update: after rounds 1-2 (...)"
    (run_dir / "status.json").write_text(
        json.dumps({"state": "failed", "message": reason, "resumable": False})
    )

    ended = end_failed_run(_config(tmp_path), NothingTrainedError(reason))

    assert str(ended) == f"run failed: {reason} (status: {run_dir / 'status.json'})"


def test_a_config_too_broken_to_name_a_folder_is_only_logged(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="fedge.server.run_ending"):
        ended = end_failed_run(None, FedgeError("unknown keys ['x']"))

    assert str(ended) == "run failed before it started: unknown keys ['x']"
    assert list(tmp_path.iterdir()) == []


def _record(msg, exc=None):
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord("flwr", logging.ERROR, __file__, 1, msg, (), exc_info)


def test_the_filter_drops_only_flowers_repeat_of_a_run_end():
    quiet = QuietRunEnded()
    banner = "Exit Code: 201\nAn unhandled exception occurred in the ServerApp."

    kept_before = quiet.filter(_record(banner))  # another failure: shown
    traceback = quiet.filter(
        _record("%s raised an exception", RunEnded("run failed: x"))
    )
    after = quiet.filter(_record(banner))
    other = quiet.filter(_record("Run finished"))

    assert (kept_before, traceback, after, other) == (True, False, False, True)


def test_the_server_app_ends_a_bad_held_out_file_cleanly(tmp_path, monkeypatch):
    import fedge.server.server_app as server_app

    # Its log handlers would outlive the test and hide later tests' log records.
    monkeypatch.setattr(server_app, "_configure_logging", lambda: None)

    bad = tmp_path / "eval.csv"
    bad.write_text("a,b\n1,2\n")  # no label column
    context = Context(
        run_id=1,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config={
            **from_run_config({}, fill_defaults=True).to_flat(),
            "dataset": "file",
            "eval-data-path": str(bad),
            "output-dir": str(tmp_path / "runs"),
            "run-name": "bad-eval",
        },
    )

    with pytest.raises(
        RunEnded, match=r"^run failed: label column 'label' not found in .*eval\.csv"
    ) as ended:
        server_app.main(grid=None, context=context)

    status = json.loads((tmp_path / "runs" / "bad-eval" / "status.json").read_text())
    assert status["state"] == "failed"
    assert "label" in status["message"]
    assert ended.value.__suppress_context__  # `from None`: no chained traceback

"""The end-of-run work starts when the run folder says complete, once."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from fedge.shared.run_folder import COMPLETE, FAILED, RUNNING, write_status
from fedge.simulations.run_end import RunEnd


class Calls:
    def __init__(self):
        self.order: list[str] = []
        self.reported = threading.Event()

    def complete(self, run_dir: Path) -> None:
        self.order.append("complete")

    def report(self, run_dir: Path) -> None:
        self.order.append("report")
        self.reported.set()


def test_a_completed_run_gets_its_result_then_its_report_before_flower_ends(
    tmp_path: Path,
):
    calls = Calls()
    write_status(tmp_path, RUNNING)
    with RunEnd(tmp_path, calls.report, calls.complete) as end:
        write_status(tmp_path, COMPLETE, "all 5 rounds done")
        # Flower is still shutting down: the report does not wait for it
        assert calls.reported.wait(timeout=5)
    end.finish()

    assert calls.order == ["complete", "report"]


def test_a_failed_run_gets_its_report_at_the_end_and_no_result(tmp_path: Path):
    calls = Calls()
    with RunEnd(tmp_path, calls.report, calls.complete) as end:
        write_status(tmp_path, FAILED, "no round aggregated an update")
        time.sleep(0.3)
        assert calls.order == []
    end.finish()

    assert calls.order == ["report"]


def test_the_previous_runs_complete_status_is_not_this_runs(tmp_path: Path):
    # Prepare: a resumed run's folder still says complete from before
    write_status(tmp_path, COMPLETE, "all 5 rounds done")
    os.utime(tmp_path / "status.json", ns=(0, 0))
    calls = Calls()
    with RunEnd(tmp_path, calls.report, calls.complete) as end:
        time.sleep(0.3)
        assert calls.order == []
        write_status(tmp_path, FAILED, "interrupted")
    end.finish()

    assert calls.order == ["report"]


def test_what_the_watch_raised_is_raised_to_the_caller(tmp_path: Path):
    def broken_report(run_dir: Path) -> None:
        raise ValueError("plot failed")

    with RunEnd(tmp_path, broken_report) as end:
        write_status(tmp_path, COMPLETE, "done")
        time.sleep(0.5)
    with pytest.raises(ValueError, match="plot failed"):
        end.finish()


class Prepared(Calls):
    def __init__(self, *, block: bool = False, fail: bool = False):
        super().__init__()
        self.release = threading.Event()
        self.prepared = threading.Event()
        if not block:
            self.release.set()
        self.fail = fail

    def prepare(self, run_dir: Path) -> None:
        self.order.append("prepare")
        self.prepared.set()
        self.release.wait(timeout=5)
        if self.fail:
            raise ValueError("plot failed")
        self.order.append("prepared")


def save_model(run_dir: Path) -> None:
    (run_dir / "model.json").write_text("{}")


def test_the_reports_preparation_starts_once_the_model_is_saved_before_complete(
    tmp_path: Path,
):
    calls = Prepared()
    write_status(tmp_path, RUNNING)
    with RunEnd(tmp_path, calls.report, calls.complete, calls.prepare) as end:
        time.sleep(0.3)
        assert calls.order == []
        save_model(tmp_path)
        assert calls.prepared.wait(timeout=5)
        time.sleep(0.3)
        write_status(tmp_path, COMPLETE, "all 5 rounds done")
        assert calls.reported.wait(timeout=5)
    end.finish()

    assert calls.order == ["prepare", "prepared", "complete", "report"]


def test_the_result_comes_at_complete_while_the_preparation_still_runs(
    tmp_path: Path,
):
    calls = Prepared(block=True)
    write_status(tmp_path, RUNNING)
    with RunEnd(tmp_path, calls.report, calls.complete, calls.prepare) as end:
        save_model(tmp_path)
        assert calls.prepared.wait(timeout=5)
        write_status(tmp_path, COMPLETE, "all 5 rounds done")
        deadline = time.monotonic() + 5
        while "complete" not in calls.order and time.monotonic() < deadline:
            time.sleep(0.05)
        # the result is out; the report waits for the preparation
        assert calls.order == ["prepare", "complete"]
        calls.release.set()
        assert calls.reported.wait(timeout=5)
    end.finish()

    assert calls.order == ["prepare", "complete", "prepared", "report"]


def test_a_previous_runs_model_starts_no_preparation(tmp_path: Path):
    save_model(tmp_path)
    os.utime(tmp_path / "model.json", ns=(0, 0))
    calls = Prepared()
    with RunEnd(tmp_path, calls.report, calls.complete, calls.prepare) as end:
        time.sleep(0.3)
        write_status(tmp_path, FAILED, "interrupted")
    end.finish()

    assert calls.order == ["report"]


def test_a_failed_preparation_leaves_the_report_to_do_the_work(tmp_path: Path):
    calls = Prepared(fail=True)
    write_status(tmp_path, RUNNING)
    with RunEnd(tmp_path, calls.report, calls.complete, calls.prepare) as end:
        save_model(tmp_path)
        write_status(tmp_path, COMPLETE, "all 5 rounds done")
        assert calls.reported.wait(timeout=5)
    end.finish()

    assert calls.order == ["prepare", "complete", "report"]

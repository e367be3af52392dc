"""The time-series accuracy study's command line."""

from __future__ import annotations

import pytest

from simulations import series_accuracy


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
    assert "--output-dir" in out


def test_the_runs_go_to_the_output_dir_given(monkeypatch, tmp_path, capsys):
    seen = []
    monkeypatch.setattr(
        series_accuracy, "run_study", lambda output_dir: seen.append(output_dir) or {}
    )
    monkeypatch.setattr(series_accuracy, "RESULTS_PATH", tmp_path / "r.json")
    monkeypatch.setattr(series_accuracy, "build_table", lambda results: "table")

    assert series_accuracy.main(["--output-dir", str(tmp_path / "runs")]) == 0

    assert seen == [tmp_path / "runs"]
    assert (tmp_path / "r.json").read_text() == "{}\n"

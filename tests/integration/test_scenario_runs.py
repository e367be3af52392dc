"""Packaged scenarios run end to end on Flower's simulation engine.

Only two run here (each costs seconds to a minute): every packaged scenario's
loading, checks and ``partitions.csv`` are covered without Flower in
tests/simulations/test_scenario_file.py.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cli.app import main as cli_main

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_dp_digits_3_clients_runs_its_own_3_clients(tmp_path: Path, capsys) -> None:
    """The issue's case: the scenario named for 3 clients ran 10 before."""
    code = cli_main(
        [
            "simulate",
            "--scenario",
            "dp-digits-3-clients",
            "--rounds",
            "1",
            "--output-dir",
            str(tmp_path),
            "--run-name",
            "r",
        ]
    )

    assert code == 0
    out = capsys.readouterr().out
    assert "fedge simulate: 3 clients, 1 rounds," in out
    assert "num-server-rounds 1 from --rounds (scenario: 15)" in out
    run_dir = tmp_path / "r"
    assert len(pd.read_csv(run_dir / "partitions.csv")) == 3
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert metrics["replies"].iloc[-1] == 3


def test_scale_scenario_at_50_clients_samples_a_tenth_each_round(
    tmp_path: Path,
) -> None:
    """scale-1000's settings with 50 clients: 5 sampled a round, 3 rounds."""
    code = cli_main(
        [
            "simulate",
            "--scenario",
            "scale-1000",
            "--clients",
            "50",
            "--output-dir",
            str(tmp_path),
            "--run-name",
            "r",
        ]
    )

    assert code == 0
    partitions = pd.read_csv(tmp_path / "r" / "partitions.csv")
    # 24,000 synthetic training rows split IID over 50 clients.
    assert len(partitions) == 50
    assert set(partitions["num-examples"]) == {480}
    metrics = pd.read_csv(tmp_path / "r" / "metrics.csv")
    assert list(metrics["round"]) == [0, 1, 2, 3]
    assert list(metrics["sampled"].iloc[1:]) == [5, 5, 5]
    assert list(metrics["replies"].iloc[1:]) == [5, 5, 5]

"""Packaged scenarios run end to end on Flower's simulation engine.

Two run end to end (each costs seconds to a minute): scale-1000 at 50 clients
here, and dp-digits-3-clients in tests/integration/test_ray_cluster.py (on a
Ray cluster of that test's own). Every packaged scenario's loading, checks and
``partitions.csv`` are covered without Flower in
tests/simulations/test_scenario_file.py.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedge.cli.app import main as cli_main

pytestmark = [pytest.mark.integration, pytest.mark.slow]


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

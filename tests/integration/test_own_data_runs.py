"""`fedge simulate` on the user's own files, end to end on Flower's engine.

One short run (1 round, 2-3 clients) per input mode: a CSV split by a column, a
folder of per-client files, an .npz split by the partitioner.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedge.cli.app import main as cli_main
from fedge.client.node_data import node_data_file
from fedge.shared.datasets import read_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def table(n: int, seed: int) -> pd.DataFrame:
    """Two numeric features, a site and a label learnable from the features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    return pd.DataFrame(
        {
            "rowid": np.arange(n, dtype=float) + 1000 * seed,
            "x1": x[:, 0],
            "x2": x[:, 1],
            "site": rng.choice(["h1", "h2", "h3"], size=n),
            "outcome": np.where(x[:, 0] + x[:, 1] > 0, "yes", "no"),
        }
    )


def simulate(tmp_path: Path, *flags: str) -> Path:
    code = cli_main(
        [
            "simulate",
            *flags,
            "--rounds",
            "1",
            "--set",
            "local-epochs=1",
            "--output-dir",
            str(tmp_path / "runs"),
            "--run-name",
            "r",
        ]
    )
    assert code == 0
    return tmp_path / "runs" / "r"


def assert_partitions_match_the_node_files(run_dir: Path) -> pd.DataFrame:
    partitions = pd.read_csv(run_dir / "partitions.csv")
    for i, expected in enumerate(partitions["num-examples"]):
        node = read_table(node_data_file(run_dir / "data", i), label_column="outcome")
        assert len(node) == expected
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert metrics["replies"].iloc[-1] == len(partitions)
    return partitions


def test_a_csv_split_by_a_column(tmp_path: Path) -> None:
    data = table(150, seed=0)
    data.to_csv(tmp_path / "all.csv", index=False)

    run_dir = simulate(
        tmp_path,
        "--data",
        str(tmp_path / "all.csv"),
        "--label-column",
        "outcome",
        "--partition-by",
        "site",
    )

    partitions = assert_partitions_match_the_node_files(run_dir)
    assert list(partitions["data"]) == ["site=h1", "site=h2", "site=h3"]
    held = set(pd.read_csv(run_dir / "data" / "central-test.csv")["rowid"])
    clients = pd.concat(
        [pd.read_csv(run_dir / "data" / f"node-{i}.csv") for i in range(3)]
    )
    assert held.isdisjoint(set(clients["rowid"]))
    assert "site" not in clients.columns
    assert len(held) + len(clients) == 150


def test_a_folder_of_per_client_files(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    table(60, seed=1).drop(columns="site").to_csv(nodes / "clinic-a.csv", index=False)
    table(40, seed=2).drop(columns="site").to_parquet(
        nodes / "clinic-b.parquet", index=False
    )
    table(30, seed=3).drop(columns="site").to_csv(tmp_path / "held.csv", index=False)

    run_dir = simulate(
        tmp_path,
        "--node-data",
        str(nodes),
        "--eval-data",
        str(tmp_path / "held.csv"),
        "--label-column",
        "outcome",
    )

    partitions = assert_partitions_match_the_node_files(run_dir)
    assert list(partitions["num-examples"]) == [60, 40]


def test_an_npz_split_by_the_partitioner(tmp_path: Path) -> None:
    data = table(120, seed=4)
    np.savez(
        tmp_path / "all.npz",
        x=data[["x1", "x2"]].to_numpy(),
        y=(data["outcome"] == "yes").astype(int).to_numpy(),
    )

    run_dir = simulate(tmp_path, "--data", str(tmp_path / "all.npz"), "--clients", "2")

    partitions = pd.read_csv(run_dir / "partitions.csv")
    for i, expected in enumerate(partitions["num-examples"]):
        assert len(np.load(run_dir / "data" / f"node-{i}.npz")["y"]) == expected
    # 120 rows, a stratified 20 % held out, 96 left for 2 clients.
    assert list(partitions["num-examples"]) == [48, 48]
    assert len(np.load(run_dir / "data" / "central-test.npz")["y"]) == 24

"""A real deployment on loopback: one flower-superlink, two flower-supernode
processes each reading its own CSV file, and `flwr run` submitting the app."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

from tests.e2e.deployment import running_keyless_node, running_superlink, submit_run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _write_node_csvs(tmp: Path) -> tuple[list[Path], Path]:
    """Digits as tabular CSVs: two nodes' disjoint training files and a test file."""
    digits = load_digits()
    columns = [f"px{i}" for i in range(digits.data.shape[1])]
    frame = pd.DataFrame(digits.data, columns=columns)
    frame["digit"] = digits.target
    order = np.random.default_rng(0).permutation(len(frame))
    test, node0, node1 = order[:400], order[400:1100], order[1100:]
    paths = []
    for name, rows in (("node0.csv", node0), ("node1.csv", node1), ("eval.csv", test)):
        path = tmp / name
        frame.iloc[rows].to_csv(path, index=False)
        paths.append(path)
    return paths[:2], paths[2]


def test_two_supernodes_train_on_their_own_csv(tmp_path: Path) -> None:
    node_files, eval_file = _write_node_csvs(tmp_path)
    out_dir = tmp_path / "runs"
    overrides = {
        "num-server-rounds": 2,
        "dataset": "file",
        "eval-data-path": str(eval_file),
        "label-column": "digit",
        "min-nodes": 2,
        "output-dir": str(out_dir),
        "run-name": "e2e",
        "round-timeout-s": 300.0,
    }
    with (
        running_superlink(tmp_path) as link,
        running_keyless_node(
            link, tmp_path, name="node0", node_config={"data-path": str(node_files[0])}
        ),
        running_keyless_node(
            link, tmp_path, name="node1", node_config={"data-path": str(node_files[1])}
        ),
    ):
        done = submit_run(link, tmp_path, overrides, timeout_s=600)
    log = done.stdout + done.stderr
    run_dir = out_dir / "e2e"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "complete", log[-3000:]
    for name in ("config.json", "metrics.csv", "model.pt", "model.json"):
        assert (run_dir / name).is_file(), name
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert list(metrics["round"]) == [0, 1, 2]
    assert (metrics.loc[metrics["round"] > 0, "replies"] == 2).all()
    initial, final = (
        metrics["central-accuracy"].iloc[0],
        metrics["central-accuracy"].iloc[-1],
    )
    assert final > initial + 0.3, (initial, final)
    meta = json.loads((run_dir / "model.json").read_text())
    assert meta["spec"]["name"] == "mlp"
    assert meta["preprocessing"]["label_column"] == "digit"
    assert meta["provenance"]["num-clients"] == 2

"""The same ServerApp and ClientApp on Flower's simulation engine, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from shared.models import ModelSpec, build_model
from simulations.simulate import simulate

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_three_clients_two_rounds_improve_and_fill_the_run_folder(
    tmp_path: Path,
) -> None:
    run_dir = simulate(
        {"num-server-rounds": 2, "local-epochs": 2, "fraction-evaluate": 1.0},
        num_clients=3,
        output_dir=tmp_path,
        run_name="sim",
        echo=lambda *_: None,
    )
    for name in (
        "config.json",
        "metrics.csv",
        "model.pt",
        "model.json",
        "status.json",
        "flower.log",
    ):
        assert (run_dir / name).is_file(), name
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert list(metrics["round"]) == [0, 1, 2]
    assert (
        metrics["central-accuracy"].iloc[-1] > metrics["central-accuracy"].iloc[0] + 0.2
    )
    assert (metrics.loc[metrics["round"] > 0, "replies"] == 3).all()
    # Federated evaluation: every node scored the global model on its own test split.
    assert (
        metrics.loc[metrics["round"] > 0, "fed-eval-accuracy"].between(0.2, 1.0).all()
    )
    partitions = pd.read_csv(run_dir / "partitions.csv")
    assert len(partitions) == 3 and partitions["num-examples"].sum() == 1347
    config = json.loads((run_dir / "config.json").read_text())
    assert config["run-config"]["num-server-rounds"] == 2
    assert {"flwr", "torch", "opacus"} <= set(config["versions"])
    meta = json.loads((run_dir / "model.json").read_text())
    model = build_model(ModelSpec.from_dict(meta["spec"]))
    model.load_state_dict(torch.load(run_dir / "model.pt"))
    assert meta["metrics"]["accuracy"] == pytest.approx(
        metrics["central-accuracy"].iloc[-1]
    )
    assert json.loads((run_dir / "status.json").read_text())["state"] == "complete"

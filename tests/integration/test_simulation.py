"""The same ServerApp and ClientApp on Flower's simulation engine, end to end."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

import fedge.simulations.simulate as simulate_module
from fedge.client.node_data import load_node_data
from fedge.shared.config import from_run_config
from fedge.shared.evaluation import evaluate_loss_accuracy
from fedge.shared.fairness import fairness_summary
from fedge.shared.models import ModelSpec, build_model
from fedge.shared.preprocessing import Preprocessing
from fedge.simulations.flower_processes import process_tree
from fedge.simulations.simulate import simulate

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_three_clients_two_rounds_improve_and_fill_the_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen_running: list[int] = []

    class WatchedEngine(simulate_module.SimulationEngine):
        """The run's own engine, noting every process of it while the run is on."""

        @contextlib.contextmanager
        def run_slot(self) -> Iterator[Any]:
            with super().run_slot() as link:
                yield link
                seen_running.extend(process_tree(self.pids))

    monkeypatch.setattr(simulate_module, "SimulationEngine", WatchedEngine)
    run_dir = simulate(
        {"num-server-rounds": 2, "local-epochs": 2, "fraction-evaluate": 1.0},
        num_clients=3,
        output_dir=tmp_path,
        run_name="sim",
        echo=lambda *_: None,
    )
    # The run had an engine of its own (SuperLink, SuperExec, Ray head, the
    # simulation process and its workers), and nothing of it outlived the run.
    assert len(seen_running) >= 5
    assert process_tree(seen_running) == []
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

    # Per-client evaluation (on by default, last round only): each node's figures
    # equal the final model evaluated directly on that node's own test split.
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert [("client-evaluation" in r) for r in records] == [False, False, True]
    per_client = records[-1]["client-evaluation"]
    assert sorted(c["partition-id"] for c in per_client) == [0, 1, 2]
    data_config = from_run_config(config["run-config"]).data
    preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    for client in per_client:
        node = {"partition-id": client["partition-id"], "num-partitions": 3}
        test = load_node_data(node, data_config, preprocessing).test
        direct = evaluate_loss_accuracy(model, test.x, test.y)
        assert client["accuracy"] == pytest.approx(direct["accuracy"])
        assert client["loss"] == pytest.approx(direct["loss"], rel=1e-5)
        assert client["num-examples"] == len(test)
        assert client["label-counts"] == [int((test.y == k).sum()) for k in range(10)]
    summary = fairness_summary([c["accuracy"] for c in per_client], threshold=0.8)
    for column, value in summary.items():
        assert metrics[column].iloc[-1] == pytest.approx(value)
    assert metrics["client-accuracy-worst"].iloc[:-1].isna().all()
    assert "## Per-client accuracy" in (run_dir / "report.md").read_text()

    # The model card every run writes: its figures are the folder's own.
    card = json.loads((run_dir / "model_card.json").read_text())
    per_client_card = card["performance"]["per-client"]
    for column in summary:
        assert per_client_card[column] == pytest.approx(metrics[column].iloc[-1])
    nodes = card["training-data"]["per-node"]
    assert [n["num-examples"] for n in nodes] == list(partitions["num-examples"])
    assert card["performance"]["central"] == meta["metrics"]
    assert sorted(card["explanations"]["saliency"]) == [str(k) for k in range(10)]
    assert all((run_dir / path).is_file() for path in card["files"])
    assert "Per client (round 2 model" in (run_dir / "model_card.md").read_text()

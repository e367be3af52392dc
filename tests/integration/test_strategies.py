"""Strategies of each kind run on the simulation engine and move the model.

One per kind: a client-side change to the loss (FedProx), a server-side
optimiser with state across rounds (FedAdam), a selection rule (MultiKrum) and
a loss-weighted step (q-FedAvg, whose weights come from the clients' replies);
FedMedian (a coordinate-wise robust aggregate) and Krum run end to end in
``test_faults.py``. Every strategy fedge
offers, including these, aggregates real updates through Flower's own code in
``tests/server/test_strategy_factory.py``; a simulation each (about 30 s of
engine start-up apiece) would add minutes to the suite and no new code path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from fedge.shared.models import ModelSpec, build_model
from fedge.simulations.simulate import simulate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Per-strategy settings a user would pick for 4 nodes (Krum and Bulyan need n >= 2f + 3
# and n >= 4f + 3; with f = 0 they still run Flower's own selection code).
EXTRA = {
    "fedadam": {"server-learning-rate": 0.05},
    "multikrum": {"num-nodes-to-select": 2},
    "qfedavg": {"qffl-q": 0.5},
}


@pytest.mark.parametrize("strategy", ["fedprox", "fedadam", "multikrum", "qfedavg"])
def test_strategy_trains_two_rounds_and_changes_the_model(
    strategy: str, tmp_path: Path
) -> None:
    run_dir = simulate(
        {
            "strategy": strategy,
            "num-server-rounds": 2,
            "local-epochs": 1,
            **EXTRA.get(strategy, {}),
        },
        num_clients=4,
        output_dir=tmp_path,
        run_name=strategy,
        echo=lambda *_: None,
    )
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert list(metrics["round"]) == [0, 1, 2]
    trained = metrics[metrics["round"] > 0]
    assert (trained["aggregated"] >= 1).all()
    assert (trained["dropped"] == 0).all()
    meta = json.loads((run_dir / "model.json").read_text())
    assert meta["provenance"]["strategy"] == strategy
    initial = build_model(ModelSpec.from_dict(meta["spec"]), model_seed=0).state_dict()
    final = torch.load(run_dir / "model.pt")
    moved = sum(float((final[k] - initial[k]).abs().sum()) for k in initial)
    assert moved > 1e-3
    assert trained["central-accuracy"].iloc[-1] > metrics["central-accuracy"].iloc[0]

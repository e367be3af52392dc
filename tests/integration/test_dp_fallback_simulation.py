"""A user's model the fast DP path does not cover, trained with DP-SGD in simulation:
Opacus's fallback runs on the workers, the log says so, the privacy figures hold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from fedge.shared.run_folder import FLOWER_LOG_FILE
from fedge.simulations.simulate import simulate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "own_nets.py"


def test_a_depthwise_convolution_model_trains_with_dp_on_opacus_fallback(
    tmp_path: Path,
) -> None:
    # Its depthwise convolution (groups = 8) is outside the fast path.
    nets = tmp_path / "user" / "nets.py"
    nets.parent.mkdir()
    shutil.copyfile(FIXTURE, nets)
    run_dir = simulate(
        {
            "model": f"{nets}:DepthwiseConvNet",
            "num-server-rounds": 2,
            "local-epochs": 1,
            "dp-mode": "sample",
            "target-epsilon": 8.0,
        },
        num_clients=2,
        output_dir=tmp_path / "runs",
        run_name="fallback",
        echo=lambda *_: None,
    )
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert list(metrics["round"]) == [0, 1, 2]
    assert (metrics.loc[metrics["round"] > 0, "replies"] == 2).all()
    card = json.loads((run_dir / "model.json").read_text())
    assert 0 < card["privacy"]["epsilon-max"] <= 8.0
    log = (run_dir / FLOWER_LOG_FILE).read_text()
    assert "DP-SGD path 'ghost': fedge's fast path does not support" in log
    assert "features.1 (Conv2d): needs groups=1" in log

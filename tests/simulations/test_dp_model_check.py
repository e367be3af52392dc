"""``fedge simulate`` refuses a model DP-SGD cannot train before any process starts,
or fixes it with ``fix-model``. Nothing here starts Flower."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import fedge.simulations.simulate as sim
from fedge.shared.config import from_run_config
from fedge.shared.errors import ModelError

BATCHNORM_NET = """
from torch import nn
def Net(*, input_shape, num_classes):
    return nn.Sequential(
        nn.Conv2d(input_shape[0], 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * input_shape[1] * input_shape[2], num_classes),
    )
"""


@pytest.fixture
def batchnorm_net(tmp_path: Path) -> str:
    path = tmp_path / "nets.py"
    path.write_text(BATCHNORM_NET)
    return f"{path}:Net"


def test_dp_run_with_batchnorm_is_refused_before_anything_is_written(
    tmp_path: Path, batchnorm_net: str
) -> None:
    with pytest.raises(
        ModelError,
        match=r"Opacus cannot train this model with DP-SGD: 1 \(BatchNorm2d\): "
        r"BatchNorm cannot support.*set fix-model = true",
    ):
        sim.simulate(
            {"model": batchnorm_net, "dp-mode": "sample"},
            num_clients=2,
            output_dir=tmp_path / "runs",
            run_name="refused",
        )
    assert not (tmp_path / "runs").exists()


def test_the_same_model_without_dp_passes_the_check(batchnorm_net: str) -> None:
    config = from_run_config({"model": batchnorm_net}, fill_defaults=True)
    sim.preflight(config, 2)


def test_fix_model_replaces_the_layer_logs_it_and_passes(
    batchnorm_net: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = from_run_config(
        {"model": batchnorm_net, "dp-mode": "sample", "fix-model": True},
        fill_defaults=True,
    )
    with caplog.at_level(logging.INFO, logger="fedge.shared.private_model"):
        sim.preflight(config, 2)
    assert "fix-model: replaced 1 (BatchNorm2d) with GroupNorm" in caplog.text

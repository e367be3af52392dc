"""A user's own architecture on Flower's simulation engine: from a .py file
(shipped to every worker) and from an installed package (found on each worker's
PYTHONPATH), each trained 2 clients x 2 rounds with its identity recorded."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from fedge.shared.models import ModelSpec, build_model
from fedge.simulations.simulate import simulate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "own_nets.py"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_trained(run_dir: Path) -> dict:
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert list(metrics["round"]) == [0, 1, 2]
    assert (metrics.loc[metrics["round"] > 0, "replies"] == 2).all()
    # Digits, 10 classes: chance is 0.1; two rounds of the user's net learn.
    assert metrics["central-accuracy"].iloc[-1] > 0.5
    card = json.loads((run_dir / "model.json").read_text())
    model = build_model(ModelSpec.from_dict(card["spec"]))
    model.load_state_dict(torch.load(run_dir / "model.pt"))
    return card


def test_a_py_file_model_trains_with_dp_on_every_worker(tmp_path: Path) -> None:
    # The user's file lives outside any package; the workers get the shipped copy.
    nets = tmp_path / "user" / "nets.py"
    nets.parent.mkdir()
    shutil.copyfile(FIXTURE, nets)
    run_dir = simulate(
        {
            "model": f"{nets}:ResidualMLP",
            "num-server-rounds": 2,
            # Two rounds are too few for the DP rule's full-batch steps: this
            # test is about the model reaching every worker, so it trains in
            # the small batches it was written with.
            "batch-size": 32,
            "local-epochs": 2,
            "dp-mode": "sample",
            "target-epsilon": 8.0,
        },
        num_clients=2,
        output_dir=tmp_path / "runs",
        run_name="py-file",
        echo=lambda *_: None,
    )
    card = _check_trained(run_dir)
    assert card["spec"]["name"] == f"{nets}:ResidualMLP"
    assert card["spec"]["identity"] == {
        "reference": f"{nets}:ResidualMLP",
        "sha256": _sha256(nets),
        "package": "",
        "version": "",
    }
    assert 0 < card["privacy"]["epsilon-max"] <= 8.0


def test_an_installed_package_model_trains_and_records_its_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What `pip install own-sim-nets` leaves in site-packages, on PYTHONPATH.
    site = tmp_path / "site"
    (site / "own_sim_nets").mkdir(parents=True)
    shutil.copyfile(FIXTURE, site / "own_sim_nets" / "__init__.py")
    dist = site / "own_sim_nets-0.3.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: own-sim-nets\nVersion: 0.3.1\n"
    )
    (dist / "top_level.txt").write_text("own_sim_nets\n")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.syspath_prepend(str(site))  # this process checks it before starting
    run_dir = simulate(
        {
            "model": "own_sim_nets:DepthwiseConvNet",
            "num-server-rounds": 2,
            "local-epochs": 3,
        },
        num_clients=2,
        output_dir=tmp_path / "runs",
        run_name="package",
        echo=lambda *_: None,
    )
    card = _check_trained(run_dir)
    assert card["spec"]["identity"] == {
        "reference": "own_sim_nets:DepthwiseConvNet",
        "sha256": _sha256(FIXTURE),
        "package": "own-sim-nets",
        "version": "0.3.1",
    }

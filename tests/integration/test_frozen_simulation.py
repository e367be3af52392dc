"""Pretrained weights and a frozen backbone on the simulation engine.

An MLP on digits starts from a saved state_dict and trains only its last two
layers (``trainable = "net.3.*,net.5.*"``). The first layer must leave every
run bit for bit as it came (after DP-SGD rounds, FedAvg and FedAdam), reach
each node once, and the bytes ``metrics.csv`` records must be exactly the
arrays that had to travel: every array in a node's first round, then only the
trainable ones, and every array again to a node whose state was wiped.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from fedge.server.checkpoint import load_latest_checkpoint
from fedge.shared.models import build_model, default_spec
from fedge.shared.records import state_dict_to_record
from fedge.shared.run_folder import (
    AGGREGATED,
    BYTES_RECEIVED,
    BYTES_SENT,
    ROUND,
    SAMPLED,
)
from fedge.simulations.simulate import simulate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAINABLE = "net.3.*,net.5.*"
FROZEN = ("net.1.weight", "net.1.bias")
CLIENTS = 3


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A 'pretrained' state_dict: the MLP with a seed no run uses."""
    model = build_model(default_spec("mlp", (64,), 10), model_seed=1234)
    path = tmp_path_factory.mktemp("weights") / "backbone.pt"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def message_bytes(state: dict, names: list[str]) -> int:
    """What Flower counts for a record of these arrays (independent of values)."""
    return state_dict_to_record({n: state[n] for n in names}).count_bytes()


def run(
    tmp_path: Path, backbone: tuple[Path, dict], name: str, **overrides
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Run, check the frozen layer and the provenance; return metrics and sizes.

    Sizes: ``full`` and ``part``, the bytes Flower counts for a message of every
    array and of the trainable ones; ``trainable``, their raw bytes.
    """
    run_dir = simulate(
        {
            "model": "mlp",
            "initial-weights": str(backbone[0]),
            "trainable": TRAINABLE,
            "num-server-rounds": 3,
            "local-epochs": 1,
            **overrides,
        },
        num_clients=CLIENTS,
        output_dir=tmp_path,
        run_name=name,
        echo=lambda *_: None,
    )
    check_frozen_and_provenance(run_dir, backbone)
    initial = backbone[1]
    trainable = [n for n in initial if n not in FROZEN]
    sizes = {
        "full": message_bytes(initial, list(initial)),
        "part": message_bytes(initial, trainable),
        "trainable": sum(
            initial[n].numel() * initial[n].element_size() for n in trainable
        ),
    }
    return pd.read_csv(run_dir / "metrics.csv").set_index(ROUND), sizes


def check_frozen_and_provenance(run_dir: Path, backbone: tuple[Path, dict]) -> None:
    path, initial = backbone
    final = torch.load(run_dir / "model.pt", weights_only=True)
    for name in FROZEN:
        assert torch.equal(final[name], initial[name]), name
    for name in ("net.3.weight", "net.5.weight"):
        assert not torch.equal(final[name], initial[name]), name
    latest = load_latest_checkpoint(run_dir)
    assert latest is not None
    saved = latest.array_record().to_torch_state_dict()
    for name in FROZEN:
        assert torch.equal(saved[name], initial[name]), name
    provenance = json.loads((run_dir / "model.json").read_text())["provenance"]
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert provenance["initial-weights-sha256"] == expected
    assert provenance["initial-weights"] == str(path)
    assert provenance["frozen"] == list(FROZEN)
    assert expected in (run_dir / "model_card.md").read_text()


def test_dp_fedavg_run_keeps_the_backbone_and_sends_it_once(
    tmp_path: Path, backbone: tuple[Path, dict]
) -> None:
    metrics, size = run(
        tmp_path,
        backbone,
        "dp-fedavg",
        **{"dp-mode": "sample", "fraction-evaluate": 1.0},
    )

    first, later = metrics.loc[1], metrics.loc[[2, 3]]
    assert (metrics.loc[[1, 2, 3], SAMPLED] == CLIENTS).all()
    assert first[BYTES_SENT] == CLIENTS * size["full"]
    assert (later[BYTES_SENT] == CLIENTS * size["part"]).all()
    # The figure: after a node's first round, bytes per client per round
    # over the trainable parameters' bytes, in both directions.
    assert (later[BYTES_SENT] / later[SAMPLED] / size["trainable"] <= 1.05).all()
    replies = metrics.loc[[1, 2, 3]]
    assert (replies[AGGREGATED] == CLIENTS).all()
    received = replies[BYTES_RECEIVED] / replies[AGGREGATED] / size["trainable"]
    assert (received <= 1.05).all()
    assert first[BYTES_SENT] / first[SAMPLED] / size["trainable"] > 1.5


def test_fedadam_run_keeps_the_backbone_and_a_wiped_node_gets_it_again(
    tmp_path: Path, backbone: tuple[Path, dict]
) -> None:
    metrics, size = run(
        tmp_path,
        backbone,
        "fedadam-wiped",
        strategy="fedadam",
        **{"server-learning-rate": 0.05, "fault-wipe-state": "1@3"},
    )
    card = (tmp_path / "fedadam-wiped" / "model_card.md").read_text()
    assert "fault-wipe-state = 1@3" in card  # the faulty run's card says so

    assert list(metrics.loc[[1, 2, 3], BYTES_SENT]) == [
        CLIENTS * size["full"],
        CLIENTS * size["part"],
        CLIENTS * size["part"] + size["full"],  # the wiped node said so, got all
    ]
    assert (metrics.loc[[1, 2, 3], AGGREGATED] == CLIENTS).all()

"""Bytes per client per round with a frozen backbone, over the trainable bytes.

A simulation on digits starts an MLP from saved weights and trains only its
last two layers (``trainable = "net.3.*,net.5.*"``; the first layer, about
half the weights, is frozen). ``metrics.csv`` records the bytes of the arrays
every message and reply carried (Flower's ``ArrayRecord.count_bytes``: the
serialised ``.npy`` bytes plus names); divided per client and by the raw
bytes of the trainable parameters, that is 1 + overhead when only trainable
arrays travel, and full / trainable when every array would travel each round.

The overhead is fixed per array (a 128-byte ``.npy`` header and the name), so
a tiny head pays more of it: the second figure set is the same ratio for a
message to a CNN whose last layer alone trains (650 parameters), computed from
the message content the coordinator builds, without a simulation.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from fedge.server.frozen_arrays import ArraysWire
from fedge.shared.models import build_model, default_spec
from fedge.shared.records import state_dict_to_record
from fedge.shared.run_folder import (
    BYTES_RECEIVED,
    BYTES_SENT,
    METRICS_CSV_FILE,
    REPLIES,
    ROUND,
    SAMPLED,
)
from fedge.shared.trainable import select_trainable, trainable_size_bytes
from fedge.simulations.simulate import simulate

NUM_CLIENTS = 5
NUM_ROUNDS = 4
TRAINABLE = "net.3.*,net.5.*"
HEAD_ONLY = "classifier.3.*"


def main() -> dict[str, Any]:
    """Run the benchmark and return its figures."""
    model = build_model(default_spec("mlp", (64,), 10), model_seed=1234)
    selection = select_trainable(model, TRAINABLE)
    trainable_bytes = trainable_size_bytes(model, selection)
    full_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    with tempfile.TemporaryDirectory(prefix="fedge-bench-") as tmp:
        weights = Path(tmp) / "backbone.pt"
        torch.save(model.state_dict(), weights)
        run_dir = simulate(
            {
                "model": "mlp",
                "initial-weights": str(weights),
                "trainable": TRAINABLE,
                "num-server-rounds": NUM_ROUNDS,
                "local-epochs": 1,
            },
            num_clients=NUM_CLIENTS,
            output_dir=Path(tmp),
            run_name="bench",
            echo=lambda *_: None,
        )
        metrics = pd.read_csv(run_dir / METRICS_CSV_FILE)
    rounds = metrics[metrics[ROUND] > 0]
    sent = rounds[BYTES_SENT] / rounds[SAMPLED] / trainable_bytes
    received = rounds[BYTES_RECEIVED] / rounds[REPLIES] / trainable_bytes
    return {
        "name": "frozen_backbone",
        "clients": NUM_CLIENTS,
        "rounds": NUM_ROUNDS,
        "model": "mlp (64-128-64-10) on digits",
        "trainable": TRAINABLE,
        "trainable_bytes": trainable_bytes,
        "frozen_bytes": full_bytes - trainable_bytes,
        "first_round_sent_per_client_ratio": round(float(sent.iloc[0]), 4),
        "sent_per_client_ratio_after_first": round(float(sent.iloc[1:].max()), 4),
        "received_per_client_ratio": round(float(received.max()), 4),
        "every_array_every_round_ratio": round(full_bytes / trainable_bytes, 4),
        **head_only_message_ratio(),
    }


def head_only_message_ratio() -> dict[str, Any]:
    """Bytes of a later round's message to a CNN whose last layer alone trains."""
    model = build_model(default_spec("cnn", (1, 8, 8), 10), model_seed=0)
    selection = select_trainable(model, HEAD_ONLY)
    arrays = state_dict_to_record(model.state_dict())
    message = ArraysWire.for_model(arrays, selection.frozen).split(arrays)
    trainable_bytes = trainable_size_bytes(model, selection)
    return {
        "head_only_cnn_trainable_bytes": trainable_bytes,
        "head_only_cnn_message_ratio": round(
            message.count_bytes() / trainable_bytes, 4
        ),
    }


if __name__ == "__main__":
    print(main())

"""Each time-series model trains one private round through the ClientApp.

A direct call of the ClientApp's train function with the message a server
sends (no simulation engine: the federation around it is tested elsewhere).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import Context, Message, RecordDict
from flwr.common import ConfigRecord, MessageType
from flwr.supercore.task_identity import TaskIdentity

from client import node_cache
from client.client_app import train
from server.reference_data import load_reference_data
from shared import keys
from shared.config import from_run_config
from shared.models import build_model, default_spec
from shared.records import record_to_state_dict, state_dict_to_record


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["cnn1d", "gru"])
def test_a_series_model_trains_one_dp_round_on_basic_motions(
    tmp_path: Path, monkeypatch, model_name: str
) -> None:
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    run_config = from_run_config(
        {
            "dataset": "basic-motions",
            "model": model_name,
            "dp-mode": "sample",
            "local-epochs": 1,
            "batch-size": 8,
            "num-server-rounds": 2,
        },
        fill_defaults=True,
    ).to_flat()
    config = from_run_config(run_config)
    reference = load_reference_data(config.data)
    spec = default_spec(
        model_name,
        reference.preprocessing.input_shape,
        reference.preprocessing.num_classes,
    )
    assert spec.input_shape == (6, 100)
    sent = build_model(spec, model_seed=0).state_dict()
    content = RecordDict(
        {
            keys.ARRAYS: state_dict_to_record(sent),
            keys.CONFIG: ConfigRecord(
                {
                    keys.MODEL_SPEC: spec.to_json(),
                    keys.PREPROCESSING: reference.preprocessing.to_json(),
                    keys.FEDGE_RUN_ID: f"series-{model_name}",
                    keys.SERVER_ROUND: 1,
                }
            ),
        }
    )
    context = Context(
        run_id=1,
        node_id=1,
        node_config={
            "partition-id": 0,
            "num-partitions": 2,
            "state-dir": str(tmp_path / "state"),
        },
        state=RecordDict(),
        run_config=run_config,
    )
    node_cache.clear_memory()

    reply = train(
        Message(content, dst_node_id=1, message_type=MessageType.TRAIN), context
    )

    metrics = reply.content[keys.METRICS]
    assert metrics[keys.REFUSED] == 0
    assert metrics[keys.DP_STEPS] > 0 and metrics[keys.EPSILON] > 0
    returned = record_to_state_dict(reply.content[keys.ARRAYS])
    assert returned.keys() == sent.keys()
    changed = [k for k in sent if not torch.equal(sent[k], returned[k])]
    assert set(changed) == set(sent)  # every tensor moved (noise alone moves it)

"""What the ClientApp's train reply carries: the metrics a node lets out.

Direct calls of the ClientApp's train function with the message a server sends
(no simulation engine: the federation around it is tested elsewhere).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from flwr.app import Context, Message, RecordDict
from flwr.common import ConfigRecord, MessageType
from flwr.supercore.task_identity import TaskIdentity

from fedge.client import node_cache
from fedge.client.client_app import train
from fedge.client.node_data import load_node_data
from fedge.server.reference_data import load_reference_data
from fedge.server.starting_model import model_spec_for
from fedge.shared import keys
from fedge.shared.config import from_run_config
from fedge.shared.models import build_model
from fedge.shared.records import load_record_into, state_dict_to_record

NODE = {"partition-id": 0, "num-partitions": 3}


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    """Flower stamps run/node/task ids on every Message it builds; give it some."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def _train_once(tmp_path: Path, **settings):
    """One train message to partition 0 of 3; return (reply, sent model, config)."""
    run_config = from_run_config(
        {"local-epochs": 1, "num-server-rounds": 2, **settings}, fill_defaults=True
    ).to_flat()
    config = from_run_config(run_config)
    reference = load_reference_data(config.data)
    spec = model_spec_for(config, reference.preprocessing)
    sent = build_model(spec, model_seed=0)
    content = RecordDict(
        {
            keys.ARRAYS: state_dict_to_record(sent.state_dict()),
            keys.CONFIG: ConfigRecord(
                {
                    keys.MODEL_SPEC: spec.to_json(),
                    keys.PREPROCESSING: reference.preprocessing.to_json(),
                    keys.FEDGE_RUN_ID: "client-app",
                    keys.SERVER_ROUND: 1,
                }
            ),
        }
    )
    context = Context(
        run_id=1,
        node_id=1,
        node_config={**NODE, "state-dir": str(tmp_path / "state")},
        state=RecordDict(),
        run_config=run_config,
    )
    node_cache.clear_memory()
    reply = train(
        Message(content, dst_node_id=1, message_type=MessageType.TRAIN), context
    )
    return reply, sent, config, reference


def _cross_entropy(model: torch.nn.Module, data) -> float:
    """Mean cross-entropy of ``model`` on ``data``, in one full-batch pass."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(data.x))
        return float(F.cross_entropy(logits, torch.from_numpy(data.y).long()))


def test_a_dp_reply_carries_the_privacy_figures_and_no_train_loss(tmp_path: Path):
    # README: "A node's train loss is not sent under DP (it is computed without
    # noise)." The reply holds exactly the privacy figures and the example count.
    reply, *_ = _train_once(tmp_path, **{"dp-mode": "sample"})

    metrics = reply.content[keys.METRICS]
    assert metrics[keys.REFUSED] == 0 and metrics[keys.DP_ROUND_STEPS] > 0
    assert keys.ARRAYS in reply.content  # it did train and release an update
    assert set(metrics) == {
        keys.REFUSED,
        keys.EPSILON,
        keys.DELTA,
        keys.NOISE_MULTIPLIER,
        keys.SAMPLE_RATE,
        keys.DP_STEPS,
        keys.DP_ROUND_STEPS,
        keys.NUM_EXAMPLES,
    }
    assert keys.TRAIN_LOSS not in metrics and keys.GLOBAL_MODEL_LOSS not in metrics


def test_without_dp_the_reply_carries_the_train_loss(tmp_path: Path):
    # The counterpart: the key the DP test looks for is the one a plain node sends.
    reply, *_ = _train_once(tmp_path)

    metrics = reply.content[keys.METRICS]
    assert metrics[keys.TRAIN_LOSS] > 0
    assert keys.EPSILON not in metrics


def test_qfedavg_reports_the_loss_of_the_model_it_received_not_the_trained_one(
    tmp_path: Path,
):
    # Prepare / Execute: one round of q-FedAvg with a step large enough that
    # training moves the loss on the node's own data measurably.
    reply, sent, config, reference = _train_once(
        tmp_path, **{"strategy": "qfedavg", "learning-rate": 0.1, "local-epochs": 2}
    )
    data = load_node_data(NODE, config.data, reference.preprocessing).train
    trained = copy.deepcopy(sent)
    load_record_into(trained, reply.content[keys.ARRAYS])
    received_loss = _cross_entropy(sent, data)
    trained_loss = _cross_entropy(trained, data)

    # Assert: the two differ by far more than the tolerance, and the reported
    # one is the received model's (q-FFL weighs by F_k(w^t), Li et al. 2020).
    assert trained_loss < 0.8 * received_loss
    reported = reply.content[keys.METRICS][keys.GLOBAL_MODEL_LOSS]
    assert reported == pytest.approx(received_loss, rel=1e-5)
    assert reported != pytest.approx(trained_loss, rel=0.1)

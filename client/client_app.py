"""The fedge ClientApp: Flower glue between Messages and local train/evaluate.

``flower-supernode`` runs it on each real node; the simulation engine runs it
for every virtual node. It holds no logic of its own beyond translating.

Its imports are what every message pays in a deployment (a fresh process per
message): torch and Flower, nothing more. pandas, scikit-learn and Opacus load
inside the calls that need them, and the config, model and data come from
:mod:`fedge.client.process_cache` and :mod:`fedge.client.node_cache`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedge.client.frozen_arrays import receive_arrays, reply_arrays
from fedge.client.node_cache import cached_node_data
from fedge.client.node_data import NodeData
from fedge.client.private_round import coordinator_record_from, train_private_round
from fedge.client.process_cache import model_for, typed_config
from fedge.client.training import train_plain
from fedge.shared import keys
from fedge.shared.config import RunConfig
from fedge.shared.evaluation import evaluate_loss_accuracy
from fedge.shared.privacy_plan import local_schedule
from fedge.shared.records import record_scalar
from fedge.shared.trainable import TrainableSelection, freeze, select_trainable

logger = logging.getLogger(__name__)
app = ClientApp()


@dataclass(frozen=True)
class _Setup:
    """What a message's handler works with."""

    config: RunConfig
    model: torch.nn.Module
    selection: TrainableSelection
    data: NodeData


def _setup(msg: Message, context: Context) -> _Setup | None:
    """Typed config, the global model with the sent weights, and the node's data.

    None when the message carries only the trainable arrays and this node does
    not hold the frozen ones (:mod:`fedge.client.frozen_arrays`).
    """
    # Simulation packs several virtual nodes onto each core; more threads only thrash.
    torch.set_num_threads(1)
    config = typed_config(context.run_config)
    server_config = msg.content.config_records[keys.CONFIG]
    model = model_for(str(server_config[keys.MODEL_SPEC]))
    selection = select_trainable(model, config.train.trainable)
    freeze(model, selection)
    received = receive_arrays(
        model,
        msg.content.array_records[keys.ARRAYS],
        selection=selection,
        frozen_sha256=str(server_config.get(keys.FROZEN_SHA256, "")),
        state=context.state,
    )
    if not received:
        return None
    data = cached_node_data(
        context.node_config,
        config.data,
        str(server_config[keys.PREPROCESSING]),
        run_id=context.run_id,
    )
    return _Setup(config, model, selection, data)


def _frozen_missing(msg: Message) -> Message:
    """Reply asking for every array: this node lost the frozen ones."""
    metrics = MetricRecord({keys.FROZEN_MISSING: 1})
    return Message(content=RecordDict({keys.METRICS: metrics}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the global model on this node's data and reply with the new weights.

    With ``dp-mode = "sample"`` the round is DP-SGD with a cumulative privacy
    ledger; a node whose budget would be exceeded replies ``refused`` and no
    weights.
    """
    setup = _setup(msg, context)
    if setup is None:
        return _frozen_missing(msg)
    config, model, data = setup.config, setup.model, setup.data
    server_config = msg.content.config_records[keys.CONFIG]
    server_round = int(record_scalar(server_config, keys.SERVER_ROUND))
    if config.dp.mode == "sample":
        figures = train_private_round(
            model,
            data.train,
            config=config,
            context=context,
            server_round=server_round,
            fedge_run_id=str(server_config.get(keys.FEDGE_RUN_ID, context.run_id)),
            model_spec=str(server_config[keys.MODEL_SPEC]),
            coordinator_record=coordinator_record_from(server_config),
        )
        metrics = MetricRecord({**figures})
        if figures[keys.REFUSED]:
            return Message(content=RecordDict({keys.METRICS: metrics}), reply_to=msg)
    else:
        global_model_loss = (
            # q-FedAvg weighs each update by the loss of the model it started from.
            evaluate_loss_accuracy(model, data.train.x, data.train.y)["loss"]
            if config.strategy.name == "qfedavg"
            else None
        )
        schedule = local_schedule(config, num_examples=len(data.train))
        result = train_plain(
            model,
            data.train.x,
            data.train.y,
            epochs=schedule.local_epochs,
            batch_size=schedule.batch_size,
            learning_rate=config.train.learning_rate,
            momentum=config.train.momentum,
            seed=config.train.model_seed * 100_003 + server_round,
            proximal_mu=config.strategy.local_proximal_mu,
        )
        metrics = MetricRecord(
            {keys.NUM_EXAMPLES: result.num_examples, keys.TRAIN_LOSS: result.train_loss}
        )
        if global_model_loss is not None:
            metrics[keys.GLOBAL_MODEL_LOSS] = global_model_loss
    content = RecordDict(
        {keys.ARRAYS: reply_arrays(model, setup.selection), keys.METRICS: metrics}
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on this node's local test split."""
    setup = _setup(msg, context)
    if setup is None:
        return _frozen_missing(msg)
    model, data = setup.model, setup.data
    figures = evaluate_loss_accuracy(model, data.test.x, data.test.y)
    num_classes = data.test.preprocessing.num_classes
    metrics = MetricRecord(
        {
            keys.NUM_EXAMPLES: len(data.test),
            keys.EVAL_LOSS: figures["loss"],
            keys.EVAL_ACCURACY: figures["accuracy"],
            # What the per-client fairness report shows beside the accuracy.
            keys.LABEL_COUNTS: np.bincount(data.test.y, minlength=num_classes).tolist(),
        }
    )
    if keys.PARTITION_ID in context.node_config:
        metrics[keys.PARTITION_ID] = int(context.node_config[keys.PARTITION_ID])
    return Message(content=RecordDict({keys.METRICS: metrics}), reply_to=msg)


__all__ = ["app"]

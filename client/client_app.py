"""The fedge ClientApp: Flower glue between Messages and local train/evaluate.

``flower-supernode`` runs it on each real node; the simulation engine runs it
for every virtual node. It holds no logic of its own beyond translating.

Its imports are what every message pays in a deployment (a fresh process per
message): torch and Flower, nothing more. pandas, scikit-learn and Opacus load
inside the calls that need them, and the config, model and data come from
:mod:`client.process_cache` and :mod:`client.node_cache`.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.node_cache import cached_node_data
from client.node_data import NodeData
from client.private_round import coordinator_record_from, train_private_round
from client.process_cache import model_for, typed_config
from client.training import train_plain
from shared import keys
from shared.config import RunConfig
from shared.evaluation import evaluate_loss_accuracy
from shared.records import load_record_into, record_scalar, state_dict_to_record

logger = logging.getLogger(__name__)
app = ClientApp()


def _setup(
    msg: Message, context: Context
) -> tuple[RunConfig, torch.nn.Module, NodeData]:
    """Typed config, the global model with the sent weights, and the node's data."""
    # Simulation packs several virtual nodes onto each core; more threads only thrash.
    torch.set_num_threads(1)
    config = typed_config(context.run_config)
    server_config = msg.content.config_records[keys.CONFIG]
    model = model_for(str(server_config[keys.MODEL_SPEC]))
    load_record_into(model, msg.content.array_records[keys.ARRAYS])
    data = cached_node_data(
        context.node_config,
        config.data,
        str(server_config[keys.PREPROCESSING]),
        run_id=context.run_id,
    )
    return config, model, data


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the global model on this node's data and reply with the new weights.

    With ``dp-mode = "sample"`` the round is DP-SGD with a cumulative privacy
    ledger; a node whose budget would be exceeded replies ``refused`` and no
    weights.
    """
    config, model, data = _setup(msg, context)
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
        result = train_plain(
            model,
            data.train.x,
            data.train.y,
            epochs=config.train.local_epochs,
            batch_size=config.train.batch_size,
            learning_rate=config.train.learning_rate,
            momentum=config.train.momentum,
            seed=config.train.model_seed * 100_003 + server_round,
            proximal_mu=config.strategy.proximal_mu
            if config.strategy.name == "fedprox"
            else 0.0,
        )
        metrics = MetricRecord(
            {keys.NUM_EXAMPLES: result.num_examples, keys.TRAIN_LOSS: result.train_loss}
        )
        if global_model_loss is not None:
            metrics[keys.GLOBAL_MODEL_LOSS] = global_model_loss
    content = RecordDict(
        {keys.ARRAYS: state_dict_to_record(model.state_dict()), keys.METRICS: metrics}
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on this node's local test split."""
    _, model, data = _setup(msg, context)
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

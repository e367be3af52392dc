"""A node's frozen arrays: kept once under their digest, never trained, never replied."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import MessageType
from flwr.supercore.task_identity import TaskIdentity

from fedge.client import node_cache, process_cache
from fedge.client.client_app import evaluate, train
from fedge.client.dp_training import train_private
from fedge.client.frozen_arrays import (
    FROZEN_ARRAYS_KEY,
    receive_arrays,
    reply_arrays,
)
from fedge.server.reference_data import load_reference_data
from fedge.shared import keys
from fedge.shared.config import from_run_config
from fedge.shared.errors import ModelError
from fedge.shared.models import build_model, default_spec
from fedge.shared.records import record_sha256, select_arrays, state_dict_to_record
from fedge.shared.trainable import freeze, select_trainable

TRAINABLE = "net.3.*,net.5.*"
FROZEN = ["net.1.weight", "net.1.bias"]
EXCHANGED = ["net.3.weight", "net.3.bias", "net.5.weight", "net.5.bias"]


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def mlp(seed: int = 0):
    return build_model(default_spec("mlp", (64,), 10), model_seed=seed)


def full_and_digest(seed: int = 3) -> tuple[ArrayRecord, str]:
    arrays = state_dict_to_record(mlp(seed).state_dict())
    return arrays, record_sha256(select_arrays(arrays, FROZEN))


# ------------------------------------------------------------ receive / reply
def test_a_full_message_is_kept_and_later_messages_need_only_the_trainable():
    model = mlp()
    selection = select_trainable(model, TRAINABLE)
    full, digest = full_and_digest()
    state = RecordDict()

    assert receive_arrays(
        model, full, selection=selection, frozen_sha256=digest, state=state
    )
    assert list(state.array_records[FROZEN_ARRAYS_KEY].keys()) == FROZEN

    other = mlp(seed=9)  # the trainable arrays of another round
    model = mlp(seed=5)  # a node process with other weights in its model
    part = select_arrays(state_dict_to_record(other.state_dict()), EXCHANGED)
    assert receive_arrays(
        model, part, selection=selection, frozen_sha256=digest, state=state
    )

    loaded = model.state_dict()
    sent = full.to_torch_state_dict()
    for name in FROZEN:
        assert torch.equal(loaded[name], sent[name])
    for name in EXCHANGED:
        assert torch.equal(loaded[name], other.state_dict()[name])


@pytest.mark.parametrize("kept", ["none", "stale"])
def test_without_the_named_frozen_arrays_the_node_says_so(kept):
    model = mlp()
    selection = select_trainable(model, TRAINABLE)
    full, digest = full_and_digest()
    state = RecordDict()
    if kept == "stale":  # arrays of an earlier run, under their own digest
        old, old_digest = full_and_digest(seed=11)
        receive_arrays(
            model, old, selection=selection, frozen_sha256=old_digest, state=state
        )
    before = {k: v.clone() for k, v in model.state_dict().items()}

    received = receive_arrays(
        model,
        select_arrays(full, EXCHANGED),
        selection=selection,
        frozen_sha256=digest,
        state=state,
    )

    assert received is False
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_frozen_arrays_that_do_not_match_their_digest_are_refused():
    model = mlp()
    full, _ = full_and_digest()
    with pytest.raises(
        ModelError, match=r"The frozen arrays sent have SHA-256 .* named"
    ):
        receive_arrays(
            model,
            full,
            selection=select_trainable(model, TRAINABLE),
            frozen_sha256="0" * 64,
            state=RecordDict(),
        )


def test_a_message_missing_trainable_arrays_is_refused():
    model = mlp()
    selection = select_trainable(model, TRAINABLE)
    full, digest = full_and_digest()
    state = RecordDict()
    receive_arrays(model, full, selection=selection, frozen_sha256=digest, state=state)

    with pytest.raises(ModelError, match=r"the message lacks \['net.5.bias'\]"):
        receive_arrays(
            model,
            select_arrays(full, EXCHANGED[:-1]),
            selection=selection,
            frozen_sha256=digest,
            state=state,
        )


def test_the_reply_carries_only_the_exchanged_arrays():
    model = mlp()
    assert list(reply_arrays(model, select_trainable(model, TRAINABLE)).keys()) == (
        EXCHANGED
    )
    assert list(reply_arrays(model, select_trainable(model, "*")).keys()) == [
        *FROZEN,
        *EXCHANGED,
    ]


# ------------------------------------------------------- DP: no grad, no noise
class LSTMBackbone(torch.nn.Module):
    """An LSTM (no DP-SGD path trains it as is) under a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.LSTM(8, 6, batch_first=True)
        self.head = torch.nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.flatten(1, 2))
        return self.head(out[:, -1])


@pytest.mark.parametrize(
    ("backbone", "trainable", "grad_sample_mode"),
    [
        ("cnn", "classifier.3.*", "fast"),
        ("cnn", "classifier.3.*", "hooks"),
        ("lstm", "head.*", "auto"),
    ],
)
def test_frozen_parameters_are_bit_for_bit_unchanged_by_dp_sgd(
    backbone, trainable, grad_sample_mode
):
    torch.manual_seed(0)
    model = (
        build_model(default_spec("cnn", (1, 8, 8), 10), model_seed=0)
        if backbone == "cnn"
        else LSTMBackbone()
    )
    freeze(model, select_trainable(model, trainable))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generator = np.random.default_rng(0)
    x = generator.normal(size=(40, 1, 8, 8)).astype(np.float32)
    y = generator.integers(0, 10, size=40)

    train_private(
        model,
        x,
        y,
        noise_multiplier=5.0,  # large: noise on a frozen array could not hide
        sample_rate=0.25,
        steps=6,
        learning_rate=0.5,
        momentum=0.9,
        max_grad_norm=1.0,
        seed=0,
        proximal_mu=0.1,
        grad_sample_mode=grad_sample_mode,
    )

    after = model.state_dict()
    head = trainable.removesuffix("*")
    for name in before:
        unchanged = torch.equal(before[name], after[name])
        assert unchanged == (not name.startswith(head)), name


# -------------------------------------------------------- the ClientApp handlers
def setup(tmp_path: Path, **overrides):
    run_config = from_run_config(
        {"model": "mlp", "trainable": TRAINABLE, "local-epochs": 1, **overrides},
        fill_defaults=True,
    ).to_flat()
    config = from_run_config(run_config)
    reference = load_reference_data(config.data)
    spec = default_spec(
        "mlp", reference.preprocessing.input_shape, reference.preprocessing.num_classes
    )
    server_config = {
        keys.MODEL_SPEC: spec.to_json(),
        keys.PREPROCESSING: reference.preprocessing.to_json(),
        keys.FEDGE_RUN_ID: "frozen",
    }
    node_config = {
        "partition-id": 0,
        "num-partitions": 5,
        "state-dir": str(tmp_path / "state"),
    }
    process_cache.clear()
    node_cache.clear_memory()
    return run_config, server_config, node_config, spec


def message(arrays, server_config, digest, server_round, kind=MessageType.TRAIN):
    content = RecordDict(
        {
            keys.ARRAYS: arrays,
            keys.CONFIG: ConfigRecord(
                {
                    **server_config,
                    keys.SERVER_ROUND: server_round,
                    keys.FROZEN_SHA256: digest,
                }
            ),
        }
    )
    return Message(content, dst_node_id=1, message_type=kind)


@pytest.mark.parametrize("dp_mode", ["none", "sample"])
def test_a_node_trains_its_head_and_replies_it_alone(tmp_path, dp_mode):
    run_config, server_config, node_config, spec = setup(
        tmp_path, **{"dp-mode": dp_mode}
    )
    context = Context(1, 1, node_config, RecordDict(), run_config)
    full = state_dict_to_record(build_model(spec, model_seed=0).state_dict())
    digest = record_sha256(select_arrays(full, FROZEN))

    first = train(message(full, server_config, digest, 1), context)
    assert list(first.content[keys.ARRAYS].keys()) == EXCHANGED
    second = train(
        message(first.content[keys.ARRAYS], server_config, digest, 2), context
    )

    assert list(second.content[keys.ARRAYS].keys()) == EXCHANGED
    assert second.content[keys.METRICS][keys.NUM_EXAMPLES] > 0
    assert not np.array_equal(
        second.content[keys.ARRAYS]["net.3.weight"].numpy(),
        full["net.3.weight"].numpy(),
    )
    # The model the node trained kept the frozen layer exactly as it was sent.
    trained = process_cache.model_for(spec.to_json()).state_dict()
    for name in FROZEN:
        assert np.array_equal(trained[name].numpy(), full[name].numpy()), name


@pytest.mark.parametrize("handler", [train, evaluate])
def test_a_node_that_lost_the_frozen_arrays_asks_for_them(tmp_path, handler):
    run_config, server_config, node_config, spec = setup(tmp_path)
    full = state_dict_to_record(build_model(spec, model_seed=0).state_dict())
    digest = record_sha256(select_arrays(full, FROZEN))
    kind = MessageType.TRAIN if handler is train else MessageType.EVALUATE
    wiped = Context(1, 1, node_config, RecordDict(), run_config)

    reply = handler(
        message(select_arrays(full, EXCHANGED), server_config, digest, 2, kind), wiped
    )

    assert dict(reply.content[keys.METRICS]) == {keys.FROZEN_MISSING: 1}
    assert keys.ARRAYS not in reply.content


def test_the_kept_frozen_arrays_survive_a_deployed_nodes_next_process(tmp_path):
    # A SuperNode hands each message's process the context.state the last one
    # left, serialised; nothing else survives (process caches start empty).
    from flwr.common.serde import context_from_proto, context_to_proto
    from flwr.proto.message_pb2 import Context as ProtoContext

    run_config, server_config, node_config, spec = setup(tmp_path)
    full = state_dict_to_record(build_model(spec, model_seed=0).state_dict())
    digest = record_sha256(select_arrays(full, FROZEN))
    context = Context(1, 1, node_config, RecordDict(), run_config)
    train(message(full, server_config, digest, 1), context)
    wire = context_to_proto(context).SerializeToString()
    process_cache.clear()
    node_cache.clear_memory()
    restored = context_from_proto(ProtoContext.FromString(wire))

    reply = train(
        message(select_arrays(full, EXCHANGED), server_config, digest, 2), restored
    )

    assert list(reply.content[keys.ARRAYS].keys()) == EXCHANGED
    trained = process_cache.model_for(spec.to_json()).state_dict()
    for name in FROZEN:
        assert np.array_equal(trained[name].numpy(), full[name].numpy()), name

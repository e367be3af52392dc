"""A round asked for again with the same global parameters: the released update is
resent bit for bit, with no new ledger entry; other parameters are a new release.

The ClientApp's train function is called directly with the messages a server
sends, each in a fresh context (as deployment runs one process per message):
only the node's state-dir carries the ledger and the cached update over.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, RecordDict
from flwr.common import ConfigRecord, MessageType
from flwr.common.serde import recorddict_to_proto
from flwr.supercore.task_identity import TaskIdentity
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from fedge.client import node_cache
from fedge.client.client_app import train
from fedge.client.release_cache import (
    CachedRelease,
    load_release,
    release_key,
    release_path,
    save_release,
)
from fedge.shared import keys
from fedge.shared.config import default_run_config, from_run_config
from fedge.shared.datasets import load_builtin
from fedge.shared.models import build_model, default_spec
from fedge.shared.records import state_dict_to_record

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
SIGMA, DELTA, BATCH = 1.1, 1e-4, 32


def _opacus_epsilon(q: float, steps: int) -> float:
    rdp = compute_rdp(q=q, noise_multiplier=SIGMA, steps=steps, orders=ORDERS)
    return float(get_privacy_spent(orders=ORDERS, rdp=rdp, delta=DELTA)[0])


@pytest.fixture
def node(tmp_path: Path, monkeypatch):
    """Ask this node for a round: ``ask(server_round, model_seed) -> Message``."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    run_config = {
        **default_run_config(),
        "dp-mode": "sample",
        "noise-multiplier": SIGMA,
        "target-epsilon": 50.0,
        "target-delta": DELTA,
        "local-epochs": 1,
        "batch-size": BATCH,
    }
    reference = load_builtin("digits", "test").preprocessing
    spec = default_spec("cnn", reference.input_shape, 10)
    node_config = {
        "partition-id": 0,
        "num-partitions": 3,
        "state-dir": str(tmp_path / "state"),
    }
    node_cache.clear_memory()

    def ask(server_round: int, model_seed: int) -> Message:
        weights = build_model(spec, model_seed=model_seed).state_dict()
        content = RecordDict(
            {
                keys.ARRAYS: state_dict_to_record(weights),
                keys.CONFIG: ConfigRecord(
                    {
                        keys.MODEL_SPEC: spec.to_json(),
                        keys.PREPROCESSING: reference.to_json(),
                        keys.FEDGE_RUN_ID: "run-resend",
                        keys.SERVER_ROUND: server_round,
                    }
                ),
            }
        )
        context = Context(
            run_id=1,
            node_id=1,
            node_config=dict(node_config),
            state=RecordDict(),  # a fresh process: nothing but the state-dir
            run_config=run_config,
        )
        return train(
            Message(content, dst_node_id=1, message_type=MessageType.TRAIN), context
        )

    return ask


def _ledger(tmp_path: Path) -> dict:
    (path,) = (tmp_path / "state").glob("privacy-ledger-*.json")
    return json.loads(path.read_text())


def _reply_bytes(reply: Message) -> bytes:
    return bytes(recorddict_to_proto(reply.content).SerializeToString())


def test_a_round_asked_again_with_the_same_parameters_is_resent_at_no_cost(
    tmp_path: Path, node, caplog
) -> None:
    node(1, model_seed=0)
    first = node(2, model_seed=1)
    ledger_before = _ledger(tmp_path)
    n = first.content[keys.METRICS][keys.NUM_EXAMPLES]
    q, steps = BATCH / n, round(n / BATCH)

    with caplog.at_level(logging.WARNING, logger="fedge.client.private_round"):
        again = node(2, model_seed=1)  # the coordinator lost the first reply

    # The same random variable released twice: identical bytes, arrays and figures.
    assert _reply_bytes(again) == _reply_bytes(first)
    assert _ledger(tmp_path) == ledger_before
    assert ledger_before["server-rounds"] == [1, 2]
    metrics = again.content[keys.METRICS]
    assert metrics[keys.EPSILON] == pytest.approx(_opacus_epsilon(q, 2 * steps))
    assert metrics[keys.DP_STEPS] == 2 * steps
    assert "resending the update already released for it, bit for bit" in caplog.text

    # Other global parameters for the same round: a new draw, recorded and counted.
    other = node(2, model_seed=2)
    assert _ledger(tmp_path)["server-rounds"] == [1, 2, 2]
    metrics = other.content[keys.METRICS]
    assert metrics[keys.EPSILON] == pytest.approx(_opacus_epsilon(q, 3 * steps))
    assert metrics[keys.DP_STEPS] == 3 * steps
    differ = [
        name
        for name, array in other.content[keys.ARRAYS].items()
        if not np.array_equal(array.numpy(), first.content[keys.ARRAYS][name].numpy())
    ]
    assert differ == list(first.content[keys.ARRAYS].keys())
    # Only the last release is kept: the first answer to round 2 is gone.
    third = node(2, model_seed=1)
    assert _ledger(tmp_path)["server-rounds"] == [1, 2, 2, 2]
    assert _reply_bytes(third) != _reply_bytes(first)


def test_the_cached_update_is_not_resent_once_a_later_round_was_trained(
    tmp_path: Path, node
) -> None:
    node(1, model_seed=0)
    first = node(2, model_seed=1)
    node(3, model_seed=2)

    again = node(2, model_seed=1)

    assert _ledger(tmp_path)["server-rounds"] == [1, 2, 3, 2]
    assert _reply_bytes(again) != _reply_bytes(first)


def test_a_wiped_state_dir_takes_the_cached_update_with_it(
    tmp_path: Path, node
) -> None:
    node(1, model_seed=0)
    for path in (tmp_path / "state").iterdir():
        path.unlink()

    again = node(1, model_seed=0)

    # Nothing on disk says round 1 was released: trained and recorded afresh
    # (the coordinator's record, not sent here, is what keeps ε from resetting).
    assert _ledger(tmp_path)["server-rounds"] == [1]
    assert again.content[keys.METRICS][keys.REFUSED] == 0


# ------------------------------------------------------------ the cache file
def _release(**changes) -> CachedRelease:
    fields = {
        "server_round": 2,
        "key": "k",
        "ledger_length": 2,
        "state_dict": {
            "w": np.arange(6, dtype=np.float32).reshape(2, 3),
            "n": np.array([3], dtype=np.int64),
        },
        "figures": {keys.EPSILON: 0.1 + 0.2, keys.DP_STEPS: 7},
    }
    return CachedRelease(**{**fields, **changes})


def test_a_release_round_trips_exactly(tmp_path: Path) -> None:
    path = release_path(tmp_path, "run/1")
    save_release(path, _release())

    loaded = load_release(path)

    assert path.name == "released-update-run_1.npz"
    assert loaded is not None
    assert (loaded.server_round, loaded.key, loaded.ledger_length) == (2, "k", 2)
    assert list(loaded.state_dict) == ["w", "n"]
    for name, array in _release().state_dict.items():
        assert loaded.state_dict[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded.state_dict[name], array)
    # 0.30000000000000004 and the int stay exactly what they were.
    assert loaded.figures == {keys.EPSILON: 0.1 + 0.2, keys.DP_STEPS: 7}
    assert isinstance(loaded.figures[keys.DP_STEPS], int)
    assert torch.equal(loaded.torch_state_dict()["w"], torch.arange(6.0).reshape(2, 3))


def test_an_unreadable_cache_is_ignored_with_a_warning(tmp_path: Path, caplog) -> None:
    path = release_path(tmp_path, "r")
    assert load_release(path) is None  # none kept yet: nothing to say
    path.write_bytes(b"not a zip archive")

    with caplog.at_level(logging.WARNING):
        assert load_release(path) is None

    assert "cannot be read" in caplog.text and "trained again" in caplog.text


@pytest.mark.parametrize(
    ("server_round", "key", "rounds", "answers"),
    [
        (2, "k", [1, 2], True),
        (3, "k", [1, 2], False),  # another round
        (2, "other", [1, 2], False),  # other parameters or settings
        (2, "k", [1, 2, 2], False),  # released again since
        (2, "k", [1, 2, 3], False),  # a later round since
        (2, "k", [2], False),  # a shorter ledger than it left
    ],
)
def test_a_cached_release_answers_only_its_own_request(
    server_round, key, rounds, answers
) -> None:
    assert _release().answers(server_round, key, rounds) is answers


def test_the_key_follows_the_weights_and_training_settings_not_the_run_section() -> (
    None
):
    config = from_run_config({"dp-mode": "sample"}, fill_defaults=True)
    weights = {"w": torch.zeros(2, 3), "b": torch.ones(3)}

    def key(**changes) -> str:
        arguments = {
            "incoming": weights,
            "config": config,
            "model_spec": "{}",
            "round_entry": (1.1, 0.05, 20),
            "num_examples": 600,
            **changes,
        }
        return release_key(**arguments)

    base = key()
    resumed = from_run_config(
        {**config.to_flat(), "resume": True, "round-timeout-s": 5.0}
    )
    assert key(config=resumed) == base
    nudged = {"w": torch.zeros(2, 3), "b": torch.ones(3)}
    nudged["w"][1, 2] = 1e-30
    different = [
        key(incoming=nudged),
        key(incoming={"w": torch.zeros(3, 2), "b": torch.ones(3)}),
        key(config=from_run_config({**config.to_flat(), "learning-rate": 0.7})),
        key(model_spec='{"x": 1}'),
        key(round_entry=(1.2, 0.05, 20)),
        key(num_examples=601),
    ]
    assert base not in different and len(set(different)) == len(different)

"""Parameter averaging: the node releases the EMA of its iterates, at no privacy cost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from opacus.accountants import RDPAccountant
from torch import nn

from fedge.client.dp_training import train_private
from fedge.client.node_data import load_node_data
from fedge.client.private_round import train_private_round
from fedge.client.weight_averaging import WeightAverage
from fedge.shared import keys
from fedge.shared.config import default_run_config, from_run_config
from fedge.shared.datasets import load_builtin
from fedge.shared.errors import ConfigError
from fedge.shared.evaluation import evaluate_loss_accuracy
from fedge.shared.models import build_model, default_spec


def _tiny_problem(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return x, y


def _model():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))


def _train(x, y, *, steps, seed, ema_decay):
    model = _model()
    train_private(
        model,
        x,
        y,
        noise_multiplier=0.8,
        sample_rate=0.25,
        steps=steps,
        learning_rate=0.3,
        momentum=0.9,
        max_grad_norm=1.0,
        seed=seed,
        grad_sample_mode="fast",
        ema_decay=ema_decay,
    )
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_released_weights_are_the_ema_of_the_iterates(seed):
    x, y = _tiny_problem(seed)
    decay, steps = 0.8, 5
    # The iterates after each step: the same seeded run stopped after t steps
    # (batches and noise are drawn step by step, so it is a prefix of the run).
    iterates = [
        _train(x, y, steps=t, seed=seed, ema_decay=0.0) for t in range(1, steps + 1)
    ]
    # Independent EMA: weights (1 - d) d^(T - t), divided by their sum 1 - d^T.
    weights = [(1 - decay) * decay ** (steps - t) for t in range(1, steps + 1)]
    expected = [
        sum(w * it[i] for w, it in zip(weights, iterates, strict=True)) / sum(weights)
        for i in range(len(iterates[0]))
    ]

    released = _train(x, y, steps=steps, seed=seed, ema_decay=decay)

    for got, want in zip(released, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # And it is not the last iterate.
    assert not torch.allclose(released[0], iterates[-1][0])


def test_decay_zero_releases_the_last_iterate():
    x, y = _tiny_problem(0)
    last = _train(x, y, steps=4, seed=0, ema_decay=0.0)
    model = _model()
    average = WeightAverage(model, decay=0.0)
    torch.testing.assert_close(average.averaged()[0], model[0].weight)
    assert [p.shape for p in last] == [p.shape for p in model.parameters()]


@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5])
def test_a_decay_outside_zero_one_is_refused(decay):
    with pytest.raises(ConfigError, match=r"ema-decay must be in \[0, 1\) \(0 = off\)"):
        WeightAverage(_model(), decay=decay)


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_the_run_config_refuses_an_invalid_decay(decay):
    with pytest.raises(
        ConfigError, match=r"'ema-decay' must be in \[0, 1\) \(0 = off\), got"
    ):
        from_run_config({"ema-decay": decay}, fill_defaults=True)


def _round(tmp_path: Path, ema_decay: float):
    run_config = {
        **default_run_config(),
        "dp-mode": "sample",
        "num-server-rounds": 3,
        "ema-decay": ema_decay,
    }
    config = from_run_config(run_config)
    node_config = {
        "partition-id": 0,
        "num-partitions": 10,
        "state-dir": str(tmp_path / f"state-{ema_decay}"),
    }
    reference = load_builtin("digits", "test")
    data = load_node_data(node_config, config.data, reference.preprocessing)
    spec = default_spec("cnn", reference.preprocessing.input_shape, 10, "tanh")
    context = Context(
        run_id=1,
        node_id=7,
        node_config=node_config,
        state=RecordDict(),
        run_config=run_config,
    )
    figures = [
        train_private_round(
            build_model(spec),
            data.train,
            config=config,
            context=context,
            server_round=server_round,
            fedge_run_id="run",
        )
        for server_round in (1, 2)
    ]
    return figures, len(data.train)


def test_averaging_leaves_the_ledger_and_epsilon_unchanged(tmp_path: Path):
    plain, n = _round(tmp_path, 0.0)
    averaged, _ = _round(tmp_path, 0.9)

    privacy_keys = (
        keys.EPSILON,
        keys.DP_STEPS,
        keys.DP_ROUND_STEPS,
        keys.NOISE_MULTIPLIER,
        keys.SAMPLE_RATE,
        keys.DELTA,
    )
    for with_ema, without in zip(averaged, plain, strict=True):
        assert {k: with_ema[k] for k in privacy_keys} == {
            k: without[k] for k in privacy_keys
        }
    # ε after two rounds is Opacus's own accountant's for the steps taken.
    last = averaged[-1]
    accountant = RDPAccountant()
    accountant.history = [
        (last[keys.NOISE_MULTIPLIER], last[keys.SAMPLE_RATE], last[keys.DP_STEPS])
    ]
    assert last[keys.EPSILON] == pytest.approx(
        accountant.get_epsilon(delta=last[keys.DELTA]), rel=1e-9
    )
    # The defaults' rule: the node's whole data is one batch, 4 steps a round.
    assert last[keys.SAMPLE_RATE] == 1.0 and last[keys.DP_ROUND_STEPS] == 4
    assert n < 1024


def test_averaging_loses_no_accuracy_without_noise():
    # Without DP noise (σ = 0), clipped SGD on the digits: the averaged model
    # is as accurate as the last iterate (a quick check, one seed each).
    train, test = load_builtin("digits", "train"), load_builtin("digits", "test")
    spec = default_spec("mlp", train.preprocessing.input_shape, 10, "tanh")
    accuracies = {}
    for decay in (0.0, 0.8):
        model = build_model(spec, model_seed=0)
        train_private(
            model,
            train.x,
            train.y,
            noise_multiplier=0.0,
            sample_rate=0.25,
            steps=40,
            learning_rate=0.5,
            momentum=0.9,
            max_grad_norm=1.0,
            seed=0,
            ema_decay=decay,
        )
        accuracies[decay] = evaluate_loss_accuracy(model, test.x, test.y)["accuracy"]
    assert accuracies[0.0] > 0.8
    assert accuracies[0.8] >= accuracies[0.0] - 0.01

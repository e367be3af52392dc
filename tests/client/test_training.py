import math

import numpy as np
import pytest
import torch
from torch import nn

from fedge.client.training import proximal_term, train_plain
from fedge.shared.models import ModelSpec, build_model

SPEC = ModelSpec(name="mlp", input_shape=(2,), num_classes=2, hidden=(8,))


def separable(n=64, seed=0):
    """Two Gaussian blobs at (-2, 0) and (+2, 0): linearly separable."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(scale=0.5, size=(n, 2)).astype(np.float32)
    x[:, 0] += np.where(y == 1, 2.0, -2.0)
    return x, y


def mean_loss(model, x, y):
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
        return float(nn.functional.cross_entropy(logits, torch.from_numpy(y)))


def distance(model, reference):
    return math.sqrt(
        sum(
            float((p.detach() - r).pow(2).sum())
            for p, r in zip(model.parameters(), reference, strict=True)
        )
    )


def train(model, x, y, **overrides):
    settings = {
        "epochs": 1,
        "batch_size": 16,
        "learning_rate": 0.1,
        "momentum": 0.9,
        "seed": 0,
    }
    settings.update(overrides)
    return train_plain(model, x, y, **settings)


# ---------------------------------------------------------------- learning
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_decreases_on_a_separable_problem(seed):
    x, y = separable(seed=seed)
    model = build_model(SPEC, model_seed=seed)
    before = mean_loss(model, x, y)

    train(model, x, y, epochs=5, seed=seed)

    after = mean_loss(model, x, y)
    assert after < 0.5 * before
    predictions = model(torch.from_numpy(x)).argmax(1).numpy()
    assert (predictions == y).mean() >= 0.95


def test_result_counts_steps_and_examples():
    x, y = separable(n=50)
    model = build_model(SPEC, model_seed=0)

    result = train(model, x, y, epochs=3, batch_size=16)

    assert result.steps == 3 * 4  # ceil(50 / 16) batches per epoch
    assert result.num_examples == 50
    assert math.isfinite(result.train_loss) and result.train_loss > 0


class OneLogit(nn.Module):
    """Logits ``(s, 0)`` for every input: the loss depends on ``s`` alone."""

    def __init__(self):
        super().__init__()
        self.s = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return torch.stack([self.s.expand(len(x)), torch.zeros(len(x))], dim=1)


def test_reported_loss_is_the_last_epochs_mean():
    # Every example has label 0, so each batch's loss is -log softmax(s, 0)[0]
    # = log(1 + e^-s), whatever the shuffle; its gradient in s is
    # -1 / (1 + e^s), so plain SGD steps s += lr / (1 + e^s). Three epochs of
    # two batches: six steps, each loss smaller than the one before.
    x = np.zeros((4, 1), dtype=np.float32)
    y = np.zeros(4, dtype=np.int64)
    learning_rate = 1.0
    s, losses = 0.0, []
    for _ in range(6):
        losses.append(math.log1p(math.exp(-s)))
        s += learning_rate / (1 + math.exp(s))
    last_epoch_mean = (losses[4] + losses[5]) / 2
    # What a wrong "mean" would report instead, all far from the right one.
    for wrong in (sum(losses) / 6, losses[5], (losses[0] + losses[1]) / 2):
        assert abs(wrong - last_epoch_mean) > 0.01

    result = train(
        OneLogit(),
        x,
        y,
        epochs=3,
        batch_size=2,
        learning_rate=learning_rate,
        momentum=0.0,
    )

    assert result.steps == 6
    assert result.train_loss == pytest.approx(last_epoch_mean, rel=1e-5)


# ---------------------------------------------------------------- reproducibility
@pytest.mark.parametrize("seed", [0, 7, 42])
def test_seeded_runs_are_identical(seed):
    x, y = separable()
    a = build_model(SPEC, model_seed=3)
    b = build_model(SPEC, model_seed=3)

    ra = train(a, x, y, epochs=2, seed=seed)
    rb = train(b, x, y, epochs=2, seed=seed)

    assert ra == rb
    assert all(
        torch.equal(pa, pb)
        for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_the_seed_changes_the_shuffle():
    x, y = separable()
    a = build_model(SPEC, model_seed=3)
    b = build_model(SPEC, model_seed=3)

    train(a, x, y, seed=0)
    train(b, x, y, seed=1)

    assert not torch.equal(
        a.state_dict()["net.1.weight"], b.state_dict()["net.1.weight"]
    )


# ---------------------------------------------------------------- FedProx
def test_proximal_term_is_half_mu_squared_distance():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.copy_(torch.tensor([3.0]))
    global_params = [torch.tensor([[0.0, 0.0]]), torch.tensor([1.0])]

    term = proximal_term(model, global_params, mu=0.5)

    # ||w - g||^2 = 1 + 4 + (3 - 1)^2 = 9
    assert float(term.detach()) == pytest.approx(0.5 / 2 * 9)
    # Its gradient is mu * (w - g).
    term.backward()
    assert torch.allclose(model.weight.grad, torch.tensor([[0.5, 1.0]]))
    assert torch.allclose(model.bias.grad, torch.tensor([1.0]))


def test_proximal_term_is_zero_at_the_global_model():
    model = build_model(SPEC, model_seed=0)
    global_params = [p.detach().clone() for p in model.parameters()]

    assert float(proximal_term(model, global_params, mu=10.0)) == 0.0


def test_proximal_term_refuses_mismatched_parameter_lists():
    model = nn.Linear(2, 1)

    with pytest.raises(ValueError):
        proximal_term(model, [torch.zeros(1, 2)], mu=1.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_large_mu_keeps_weights_closer_to_the_global_model(seed):
    x, y = separable(seed=seed)
    free = build_model(SPEC, model_seed=seed)
    proximal = build_model(SPEC, model_seed=seed)
    start = [p.detach().clone() for p in free.parameters()]

    train(free, x, y, epochs=3, seed=seed, proximal_mu=0.0)
    train(proximal, x, y, epochs=3, seed=seed, proximal_mu=5.0)

    assert distance(proximal, start) < 0.5 * distance(free, start)

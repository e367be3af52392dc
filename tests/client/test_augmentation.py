"""Augmentation multiplicity: K views per example, averaged before the clip."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedge.client.dp_clipping import ClippedGradients
from fedge.client.dp_training import make_private_step, train_private
from fedge.shared import keys
from fedge.shared.augmentation import (
    augment_generator,
    augment_views,
    check_augmentable,
)
from fedge.shared.errors import ConfigError
from fedge.shared.models import build_model, default_spec
from tests.client.dp_round import SPEND, one_dp_round, opacus_epsilon

K = 4
# Linear; Conv2d + GroupNorm + Linear; Conv1d + GroupNorm; DPGRU (Linear per step);
# a frozen extractor and a Linear head.
MODELS = [
    ("mlp", (64,)),
    ("cnn", (1, 8, 8)),
    ("cnn1d", (3, 20)),
    ("gru", (3, 12)),
    ("random-conv-linear", (1, 8, 8)),
]


def _model_and_views(name, shape, n=5, seed=0):
    model = build_model(default_spec(name, shape, 10), model_seed=seed)
    gen = torch.Generator().manual_seed(seed)
    views = torch.randn(n * K, *shape, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return model, views, y


def _clipped_mean_gradients(model, views, y, clip):
    """Reference: per example, autograd on each view, mean, then Opacus's clip."""
    params = [p for p in model.parameters() if p.requires_grad]
    contributions = []
    for i in range(len(y)):
        per_view = [
            torch.autograd.grad(
                F.cross_entropy(model(views[i * K + k : i * K + k + 1]), y[i : i + 1]),
                params,
            )
            for k in range(K)
        ]
        mean = [torch.stack(g).mean(0) for g in zip(*per_view, strict=True)]
        norm = torch.sqrt(sum((g**2).sum() for g in mean))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        contributions.append([factor * g for g in mean])
    return contributions


@pytest.mark.parametrize(("name", "shape"), MODELS)
def test_each_example_contributes_its_clipped_mean_over_views(name, shape):
    model, views, y = _model_and_views(name, shape)
    clip = 0.05  # below every example's norm here: every clip binds
    expected = _clipped_mean_gradients(model, views, y, clip)

    with ClippedGradients(model) as clipper:
        total, _, norms = clipper.clipped_sum(views, y, max_grad_norm=clip, views=K)
        total = [g.clone() for g in total]
        alone = []
        for i in range(len(y)):
            grads, _, _ = clipper.clipped_sum(
                views[i * K : (i + 1) * K], y[i : i + 1], max_grad_norm=clip, views=K
            )
            alone.append([g.clone() for g in grads])

    assert len(norms) == len(y) and torch.all(norms > clip)
    for got, want in zip(total, zip(*expected, strict=True), strict=True):
        torch.testing.assert_close(got, sum(want), atol=1e-6, rtol=1e-4)
    for grads, want in zip(alone, expected, strict=True):
        norm = float(torch.sqrt(sum((g**2).sum() for g in grads)))
        assert norm <= clip * (1 + 1e-5)
        for g, w in zip(grads, want, strict=True):
            torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-4)


def _opposing_views():
    """Two views whose gradients each have norm ~7.1 but average to norm ~0.71.

    At zero weights the logits are 0, so for label 0 both views have
    dLoss/dlogits b = (-1/2, 1/2) and gradient b a^T: a = (10, 1) and (-10, 1)
    give gradients of norm ||b|| ||a|| = 0.707 * 10.05; their mean is
    b (0, 1)^T, of norm 0.707 < C = 1, so it is not clipped. Clipping each view
    first would give (1 / 10.05) of that instead.
    """
    model = nn.Linear(2, 2, bias=False)
    nn.init.zeros_(model.weight)
    views = torch.tensor([[10.0, 1.0], [-10.0, 1.0]])
    return model, views, torch.tensor([0])


def _sgd_step(model, mode):
    """A noiseless DP-SGD step of rate 1, C = 1, dividing by one example."""
    return make_private_step(
        model,
        grad_sample_mode=mode,
        noise_multiplier=0.0,
        max_grad_norm=1.0,
        expected_batch_size=1,
        learning_rate=1.0,
        momentum=0.0,
        generator=torch.Generator().manual_seed(0),
    )


@pytest.mark.filterwarnings("ignore:Full backward hook")
@pytest.mark.parametrize("mode", ["fast", "hooks"])
def test_views_of_one_example_are_clipped_together_not_apart(mode):
    model, views, y = _opposing_views()
    step = _sgd_step(model, mode)
    step.step(views, y, views=2)
    step.close()

    # One SGD step of rate 1 from zero: minus clip(mean) = -b (0, 1)^T.
    clip_of_mean = torch.tensor([[0.0, 0.5], [0.0, -0.5]])
    torch.testing.assert_close(model.weight.detach(), clip_of_mean)


def test_ghost_clipping_refuses_views():
    model, views, y = _opposing_views()
    step = _sgd_step(model, "ghost")
    with pytest.raises(ConfigError, match="ghost clipping clips each input row"):
        step.step(views, y, views=2)
    step.close()


def test_rows_that_are_not_k_per_label_are_refused():
    model, views, y = _opposing_views()
    with (
        ClippedGradients(model) as clipper,
        pytest.raises(ValueError, match=r"needs 3 input rows per label.*got 2 rows"),
    ):
        clipper.clipped_sum(views, y, max_grad_norm=1.0, views=3)


def _train(name, shape, mode, multiplicity, seed=3):
    model = build_model(default_spec(name, shape, 4), model_seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, *shape)).astype(np.float32)
    y = rng.integers(0, 4, size=30)
    result = train_private(
        model,
        x,
        y,
        sample_rate=8 / 30,
        steps=6,
        learning_rate=0.1,
        momentum=0.9,
        noise_multiplier=0.0,
        max_grad_norm=0.3,
        seed=seed,
        grad_sample_mode=mode,
        augment_multiplicity=multiplicity,
        augment_seed=(0, 1),
    )
    return result


@pytest.mark.filterwarnings("ignore:Full backward hook")
@pytest.mark.parametrize(("name", "shape"), [("cnn", (1, 8, 8)), ("cnn1d", (2, 20))])
def test_fast_path_and_opacus_hooks_train_the_same_with_views(name, shape):
    fast = _train(name, shape, "fast", K)
    hooks = _train(name, shape, "hooks", K)
    plain = _train(name, shape, "fast", 0)

    for k in fast.state_dict:
        torch.testing.assert_close(
            fast.state_dict[k], hooks.state_dict[k], atol=1e-5, rtol=0
        )
    assert fast.train_loss == pytest.approx(hooks.train_loss, rel=1e-5)
    assert any(  # the views are not the examples themselves
        not torch.equal(fast.state_dict[k], plain.state_dict[k])
        for k in fast.state_dict
    )


def test_views_are_seeded_by_seed_and_step():
    x = torch.randn(3, 2, 30)
    first = augment_views(x, multiplicity=K, generator=augment_generator((0, 1), 5))
    again = augment_views(x, multiplicity=K, generator=augment_generator((0, 1), 5))
    other = augment_views(x, multiplicity=K, generator=augment_generator((0, 1), 6))

    assert first.shape == (3 * K, 2, 30)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_views_are_shifts_of_their_own_example(seed):
    # One lit pixel per example, in the middle of a 16 x 16 image: each view
    # holds it once, moved by at most round(16 / 8) = 2 pixels per axis.
    x = torch.zeros(3, 1, 16, 16)
    for i, (r, c) in enumerate([(7, 7), (8, 5), (6, 9)]):
        x[i, 0, r, c] = i + 1.0
    views = augment_views(x, multiplicity=K, generator=augment_generator((seed,), 0))
    shifts = set()
    for row, view in enumerate(views):
        i = row // K
        lit = view[0].nonzero().tolist()
        assert len(lit) == 1 and view[0][tuple(lit[0])] == i + 1.0
        (r0, c0) = x[i, 0].nonzero().tolist()[0]
        dr, dc = lit[0][0] - r0, lit[0][1] - c0
        assert abs(dr) <= 2 and abs(dc) <= 2
        shifts.add((dr, dc))
    assert len(shifts) > 1


def test_series_views_scale_jitter_and_shift_within_bounds():
    x = torch.ones(2, 3, 50)
    views = augment_views(x, multiplicity=K, generator=augment_generator((0,), 0))
    # Shifted by at most 50 // 10 = 5 steps: the middle 40 steps are all data,
    # scaled by ~N(1, 0.1) and jittered by ~N(0, 0.05).
    middle = views[:, :, 5:45]
    assert torch.all((middle - 1).abs() < 1)
    assert not torch.equal(views[0], views[1])


def test_tables_are_refused():
    with pytest.raises(
        ConfigError, match=r"needs images .* or time series .*shape \(5,\)"
    ):
        augment_views(torch.zeros(2, 5), multiplicity=2, generator=torch.Generator())
    with pytest.raises(ConfigError, match="augment-multiplicity' needs images"):
        _train("mlp", (5,), "fast", 2)


def test_the_run_check_refuses_tables_only_when_dp_sgd_augments():
    check_augmentable((1, 8, 8), multiplicity=K)
    check_augmentable((6, 100), multiplicity=K)
    check_augmentable((30,), multiplicity=0)
    check_augmentable((30,), multiplicity=K, dp_mode="none")
    with pytest.raises(ConfigError, match=r"got examples of shape \(30,\).*Set aug"):
        check_augmentable((30,), multiplicity=K)


def test_a_negative_multiplicity_is_refused():
    with pytest.raises(
        ConfigError, match="augment_multiplicity must be an integer >= 0"
    ):
        _train("cnn", (1, 8, 8), "fast", -1)


def test_the_privacy_spend_is_that_of_the_run_without_views():
    with_views, model_views, n = one_dp_round("cnn", **{"augment-multiplicity": K})
    without, model_plain, _ = one_dp_round("cnn")

    assert {k: with_views[k] for k in SPEND} == {k: without[k] for k in SPEND}
    assert with_views[keys.EPSILON] == without[keys.EPSILON]
    assert with_views[keys.SAMPLE_RATE] == pytest.approx(32 / n)
    assert with_views[keys.DP_ROUND_STEPS] == round(n / 32)
    assert with_views[keys.EPSILON] == pytest.approx(
        opacus_epsilon(with_views), rel=1e-6
    )
    assert any(
        not torch.equal(a, b)
        for a, b in zip(
            model_views.state_dict().values(),
            model_plain.state_dict().values(),
            strict=True,
        )
    )


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_auto_takes_opacus_hooks_where_it_would_take_ghost_clipping():
    # LayerNorm: not on the fast path; Linear layers hold most parameters: ghost.
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(20, 16), nn.LayerNorm(16), nn.Linear(16, 3)
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 2, 10)).astype(np.float32)
    y = rng.integers(0, 3, size=12)
    settings = {
        "noise_multiplier": 0.5,
        "sample_rate": 0.5,
        "steps": 2,
        "learning_rate": 0.1,
        "momentum": 0.0,
        "max_grad_norm": 1.0,
        "seed": 0,
    }

    plain = train_private(model, x, y, **settings)
    views = train_private(model, x, y, augment_multiplicity=K, **settings)

    assert (plain.grad_sample_mode, views.grad_sample_mode) == ("ghost", "hooks")

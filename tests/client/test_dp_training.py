import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from fedge.client.dp_clipping import ClippedGradients
from fedge.client.dp_training import make_private_step, train_private
from fedge.shared.errors import ConfigError, DataError, ModelError
from fedge.shared.models import build_model, default_spec

# cnn1d: Conv1d + GroupNorm; gru: Opacus's DPGRU, whose per-step Linear layers run
# once per step (the fast path sums their calls).
MODELS = [("cnn", (1, 8, 8)), ("mlp", (64,)), ("cnn1d", (3, 20)), ("gru", (3, 12))]


def model_and_data(name, shape, n=24, seed=0):
    model = build_model(default_spec(name, shape, 10), model_seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    y = rng.integers(0, 10, size=n)
    return model, x, y


def per_example_grads(model, x, y):
    """Reference: one autograd backward per example (independent of our code)."""
    grads = []
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        grads.append([p.grad.detach().clone() for p in model.parameters()])
    model.zero_grad()
    return grads


@pytest.mark.parametrize(("name", "shape"), MODELS)
def test_per_sample_gradients_match_per_example_autograd(name, shape):
    model, x, y = model_and_data(name, shape, n=6)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    expected = per_example_grads(model, x, y)
    with ClippedGradients(model) as clipper:
        got = clipper.per_sample_gradients(x, y)
    for i in range(len(x)):
        for g, e in zip(got, expected[i], strict=True):
            torch.testing.assert_close(g[i], e, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("in_channels", [1, 12])  # im2col path / grouped-conv path
def test_per_sample_gradients_of_strided_dilated_unbiased_convolutions(in_channels):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(in_channels, 5, 3, stride=2, padding=(1, 2), dilation=2, bias=False),
        nn.GroupNorm(1, 5, affine=False),
        nn.Tanh(),
        nn.Conv2d(5, 4, (2, 3), stride=(1, 2)),
        nn.Flatten(),
        nn.LazyLinear(3, bias=False),
    )
    x = torch.randn(5, in_channels, 9, 11)
    y = torch.tensor([0, 1, 2, 1, 0])
    model(x)  # materialise the lazy layer
    expected = per_example_grads(model, x, y)
    with ClippedGradients(model) as clipper:
        got = clipper.per_sample_gradients(x, y)
        clipped, _, _ = clipper.clipped_sum(x, y, max_grad_norm=1e9)
    for i in range(len(x)):
        for g, e in zip(got, expected[i], strict=True):
            torch.testing.assert_close(g[i], e, atol=1e-6, rtol=1e-5)
    for c, g in zip(clipped, got, strict=True):  # huge bound: no clipping
        torch.testing.assert_close(c, g.sum(0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("name", "shape"), MODELS)
def test_each_example_gradient_is_clipped_to_max_grad_norm(name, shape):
    model, x, y = model_and_data(name, shape, n=8)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    per_example = per_example_grads(model, x, y)
    norms = torch.stack(
        [torch.sqrt(sum((g**2).sum() for g in grads)) for grads in per_example]
    )
    bound = float(norms.median())  # half the examples get clipped
    factors = (bound / (norms + 1e-6)).clamp(max=1.0)
    assert (norms > bound).sum() >= 3 and (norms < bound).sum() >= 3
    assert torch.all(factors * norms <= bound + 1e-6)
    expected = [
        sum(factors[i] * per_example[i][k] for i in range(len(x)))
        for k in range(len(per_example[0]))
    ]
    with ClippedGradients(model) as clipper:
        got, loss_sum, got_norms = clipper.clipped_sum(x, y, max_grad_norm=bound)
    torch.testing.assert_close(got_norms, norms, atol=1e-5, rtol=1e-5)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-5)
    assert float(loss_sum) == pytest.approx(
        float(F.cross_entropy(model(x), y, reduction="sum").detach()), rel=1e-6
    )


@pytest.mark.filterwarnings("ignore:Full backward hook")
@pytest.mark.parametrize(("name", "shape"), MODELS)
def test_fast_step_equals_opacus_hooks_on_the_same_batches(name, shape):
    model, x, y = model_and_data(name, shape, n=20)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    reference, initial = copy.deepcopy(model), copy.deepcopy(model)
    settings = {"lr": 0.2, "momentum": 0.9}
    clip, batch = 0.5, 6
    # Opacus's reference mode, built here from its public classes.
    gsm = GradSampleModule(reference, loss_reduction="mean")  # grad_sample_mode hooks
    opacus_opt = DPOptimizer(
        torch.optim.SGD(reference.parameters(), **settings),
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=batch,
    )
    ours = make_private_step(
        model,
        grad_sample_mode="fast",
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=batch,
        learning_rate=settings["lr"],
        momentum=settings["momentum"],
        generator=torch.Generator().manual_seed(0),
    )
    batches = [[0, 3, 4, 9, 11, 15], [1, 2], [], list(range(20)), [5, 6, 7]]
    for idx in batches:
        opacus_opt.zero_grad()
        F.cross_entropy(gsm(x[idx]), y[idx]).backward()
        opacus_opt.step()
        ours.step(x[idx], y[idx])
    ours.close()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0)
    assert any(
        not torch.equal(p, q)
        for p, q in zip(model.parameters(), initial.parameters(), strict=True)
    )


@pytest.mark.parametrize(("name", "shape"), MODELS)
def test_train_private_fast_path_equals_opacus_hooks_path(name, shape):
    results = {}
    for mode in ("fast", "hooks"):
        model, x, y = model_and_data(name, shape, n=30)
        results[mode] = train_private(
            model,
            x,
            y,
            # n = 30, batch 8: q = 8/30; 30/8 = 3.75 → 4 steps per epoch, 2 epochs.
            sample_rate=8 / 30,
            steps=8,
            learning_rate=0.1,
            momentum=0.9,
            noise_multiplier=0.0,
            max_grad_norm=0.3,
            seed=5,
            proximal_mu=0.05,
            grad_sample_mode=mode,
        )
    fast, hooks = results["fast"], results["hooks"]
    assert (fast.grad_sample_mode, hooks.grad_sample_mode) == ("fast", "hooks")
    assert list(fast.state_dict) == list(hooks.state_dict)
    assert not any(k.startswith("_module.") for k in hooks.state_dict)
    for k in fast.state_dict:
        torch.testing.assert_close(
            fast.state_dict[k], hooks.state_dict[k], atol=1e-5, rtol=0
        )
    assert fast.num_examples == 30
    assert fast.train_loss == pytest.approx(hooks.train_loss, rel=1e-5)


@pytest.mark.parametrize("mode", ["fast", "ghost", "hooks"])
@pytest.mark.parametrize("seed", [0, 1])
def test_noise_on_the_summed_clipped_gradient_has_std_sigma_times_c(mode, seed):
    sigma, clip = 0.7, 0.5
    model, x, y = model_and_data("mlp", (64,), n=10, seed=seed)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    start = copy.deepcopy(model)
    after = {}
    for noise in (0.0, sigma):
        net = copy.deepcopy(start)
        # lr 1, no momentum, expected batch 1: update = -(clipped sum + noise).
        step = make_private_step(
            net,
            grad_sample_mode=mode,
            noise_multiplier=noise,
            max_grad_norm=clip,
            expected_batch_size=1,
            learning_rate=1.0,
            momentum=0.0,
            generator=torch.Generator().manual_seed(seed),
        )
        step.step(x, y)
        step.close()
        after[noise] = torch.cat([p.detach().flatten() for p in net.parameters()])
    noise = after[0.0] - after[sigma]  # ~17k independent draws
    assert noise.std().item() == pytest.approx(sigma * clip, rel=0.03)
    assert abs(noise.mean().item()) < 4 * sigma * clip / noise.numel() ** 0.5


def test_noise_is_added_and_sigma_zero_is_deterministic():
    def run(sigma, seed):
        model, x, y = model_and_data("mlp", (64,), n=20)
        return train_private(
            model,
            x,
            y,
            sample_rate=0.25,
            steps=4,
            learning_rate=0.1,
            momentum=0.0,
            noise_multiplier=sigma,
            max_grad_norm=1.0,
            seed=seed,
        ).state_dict

    quiet_a, quiet_b, noisy = run(0.0, 3), run(0.0, 3), run(1.0, 3)
    unseeded_a, unseeded_b = run(1.0, None), run(1.0, None)
    for k in quiet_a:
        assert torch.equal(quiet_a[k], quiet_b[k])
    assert any(not torch.allclose(quiet_a[k], noisy[k]) for k in quiet_a)
    assert any(not torch.equal(unseeded_a[k], unseeded_b[k]) for k in quiet_a)


@pytest.mark.parametrize("mode", ["fast", "ghost", "hooks"])
def test_fedprox_adds_mu_times_drift_after_the_noise(mode):
    lr, mu = 0.1, 0.5
    model, x, y = model_and_data("mlp", (64,), n=8)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    offset = [torch.full_like(p, 0.3) for p in model.parameters()]
    global_params = [
        p.detach() + o for p, o in zip(model.parameters(), offset, strict=True)
    ]
    after = {}
    for m in (0.0, mu):
        net = copy.deepcopy(model)
        step = make_private_step(
            net,
            grad_sample_mode=mode,
            noise_multiplier=0.0,
            max_grad_norm=1.0,
            expected_batch_size=4,
            learning_rate=lr,
            momentum=0.0,
            generator=torch.Generator().manual_seed(0),
            proximal_mu=m,
            global_params=global_params,
        )
        step.step(x, y)
        step.close()
        after[m] = [p.detach() for p in net.parameters()]
    # w_new(mu) - w_new(0) = -lr * mu * (w - w_global) = lr * mu * offset
    for a, b, o in zip(after[mu], after[0.0], offset, strict=True):
        torch.testing.assert_close(a - b, lr * mu * o, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", ["fast", "ghost", "hooks"])
def test_an_empty_poisson_batch_still_gets_noise(mode):
    model, _, _ = model_and_data("mlp", (64,), n=4)
    empty_x, empty_y = torch.zeros(0, 64), torch.zeros(0, dtype=torch.long)
    before = [p.detach().clone() for p in model.parameters()]
    for sigma, changes in ((0.0, False), (1.0, True)):
        step = make_private_step(
            model,
            grad_sample_mode=mode,
            noise_multiplier=sigma,
            max_grad_norm=1.0,
            expected_batch_size=4,
            learning_rate=0.1,
            momentum=0.0,
            generator=torch.Generator().manual_seed(0),
        )
        assert step.step(empty_x, empty_y) == 0.0
        step.close()
        moved = any(
            not torch.equal(p, b)
            for p, b in zip(model.parameters(), before, strict=True)
        )
        assert moved == changes


def test_global_params_of_another_model_are_refused():
    model, _, _ = model_and_data("mlp", (64,), n=4)
    with pytest.raises(ModelError, match="global_params must match"):
        make_private_step(
            model,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=4,
            learning_rate=0.1,
            momentum=0.0,
            generator=torch.Generator(),
            proximal_mu=0.1,
            global_params=[torch.zeros(3)],
        )


def test_batchnorm_model_is_refused_naming_the_layer():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 2)
    )
    x = np.zeros((4, 1, 8, 8), np.float32)
    with pytest.raises(
        ModelError, match=r"1 \(BatchNorm2d\): BatchNorm cannot support"
    ):
        train_private(
            model,
            x,
            np.zeros(4, int),
            sample_rate=0.5,
            steps=2,
            learning_rate=0.1,
            momentum=0.0,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            seed=0,
        )


def test_unsupported_layer_falls_back_to_opacus_ghost_clipping():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    y = np.arange(10) % 2
    args = {
        "sample_rate": 0.4,
        "steps": 3,
        "learning_rate": 0.1,
        "momentum": 0.0,
        "noise_multiplier": 1.0,
        "max_grad_norm": 1.0,
        "seed": 0,
    }
    assert train_private(model, x, y, **args).grad_sample_mode == "ghost"
    with pytest.raises(ModelError, match=r"1 \(LayerNorm\).*grad_sample_mode='hooks'"):
        train_private(model, x, y, grad_sample_mode="fast", **args)


def test_a_linear_layer_used_twice_gets_the_sum_of_its_calls_gradients():
    # A recurrent layer's step runs its Linear layers once per step, like this.
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(torch.tanh(self.fc(x)))

    torch.manual_seed(0)
    model = Twice()
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    expected = per_example_grads(model, x, y)
    with ClippedGradients(model) as clipper:
        got = clipper.per_sample_gradients(x, y)
    for i in range(len(x)):
        for g, e in zip(got, expected[i], strict=True):
            torch.testing.assert_close(g[i], e, atol=1e-6, rtol=1e-5)


def test_a_convolution_used_twice_is_refused_by_the_fast_path():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(2, 2, 3, padding=1)

        def forward(self, x):
            return self.conv(self.conv(x)).mean(2)

    x = np.zeros((4, 2, 5), np.float32)
    with pytest.raises(ModelError, match="ran more than once"):
        train_private(
            Twice(),
            x,
            np.zeros(4, int),
            sample_rate=1.0,
            steps=1,
            learning_rate=0.1,
            momentum=0.0,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            seed=0,
            grad_sample_mode="fast",
        )


@pytest.mark.parametrize("mode", ["fast", "ghost", "hooks"])
def test_model_in_eval_mode_trains_and_is_left_without_hooks(mode):
    model, x, y = model_and_data("cnn", (1, 8, 8), n=10)
    model.eval()
    train_private(
        model,
        x,
        y,
        sample_rate=0.4,
        steps=3,
        learning_rate=0.1,
        momentum=0.0,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        seed=0,
        grad_sample_mode=mode,
    )
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert all(not hasattr(p, "grad_sample") for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"y": np.zeros(3, int)}, DataError, "got 10 inputs and 3 labels"),
        ({"steps": 0}, ConfigError, "steps must be an integer >= 1, got 0"),
        ({"learning_rate": 0.0}, ConfigError, "learning_rate must be > 0, got 0.0"),
        ({"momentum": 1.0}, ConfigError, r"momentum must be in \[0, 1\), got 1.0"),
        (
            {"noise_multiplier": -1.0},
            ConfigError,
            "noise_multiplier must be finite and >= 0",
        ),
        ({"max_grad_norm": 0.0}, ConfigError, "max_grad_norm must be finite and > 0"),
        ({"grad_sample_mode": "ew"}, ConfigError, "grad_sample_mode must be one of"),
        (
            {"sample_rate": 1.5},
            ConfigError,
            r"sample_rate must be in \(0, 1\], got 1.5",
        ),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, error, match):
    model, x, y = model_and_data("mlp", (64,), n=10)
    args = {
        "x": x,
        "y": y,
        "sample_rate": 0.4,
        "steps": 3,
        "learning_rate": 0.1,
        "momentum": 0.0,
        "noise_multiplier": 1.0,
        "max_grad_norm": 1.0,
        "seed": 0,
    } | kwargs
    with pytest.raises(error, match=match):
        train_private(model, **args)

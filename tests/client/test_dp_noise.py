"""The fast DP-SGD path's noise at real batch sizes, against Opacus's DPOptimizer.

With ``loss_reduction="mean"`` Opacus adds N(0, (σC)²) to the sum of clipped
per-example gradients and divides by the expected batch size B, so the noise
on the averaged gradient has std σC/B per coordinate. A scale error by a
factor of B (σC instead of σC/B, or σC/B²) must fail these tests.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from scipy import stats

from fedge.client.dp_training import make_private_step
from fedge.shared.models import build_model, default_spec

SIGMA, CLIP = 1.3, 0.5


def _model_and_batch(batch_size, seed=0):
    model = build_model(default_spec("mlp", (64,), 10), model_seed=seed)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=(batch_size, 64)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 10, size=batch_size))
    return model, x, y


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _opacus_step(model, x, y, *, noise_multiplier, batch_size, seed):
    """Parameters after one SGD step (lr 1) by Opacus's own DP-SGD classes."""
    net = copy.deepcopy(model)
    optimizer = DPOptimizer(
        torch.optim.SGD(net.parameters(), lr=1.0),
        noise_multiplier=noise_multiplier,
        max_grad_norm=CLIP,
        expected_batch_size=batch_size,
        loss_reduction="mean",
        generator=torch.Generator().manual_seed(seed),
    )
    gsm = GradSampleModule(net, loss_reduction="mean")
    optimizer.zero_grad()
    F.cross_entropy(gsm(x), y).backward()
    optimizer.step()
    return _flat(net)


def _fast_step(model, x, y, *, noise_multiplier, batch_size, seed):
    """Parameters after one step (lr 1) of fedge's fast path."""
    net = copy.deepcopy(model)
    step = make_private_step(
        net,
        grad_sample_mode="fast",
        noise_multiplier=noise_multiplier,
        max_grad_norm=CLIP,
        expected_batch_size=batch_size,
        learning_rate=1.0,
        momentum=0.0,
        generator=torch.Generator().manual_seed(seed),
    )
    step.step(x, y)
    step.close()
    return _flat(net)


@pytest.mark.filterwarnings("ignore:Full backward hook")
@pytest.mark.parametrize("batch_size", [4, 64])
@pytest.mark.parametrize("seed", [0, 1])
def test_fast_path_noise_has_std_sigma_c_over_b_like_opacus(batch_size, seed):
    model, x, y = _model_and_batch(batch_size, seed)
    # Opacus without noise: the clipped mean gradient step, the common part.
    noiseless = _opacus_step(
        model, x, y, noise_multiplier=0.0, batch_size=batch_size, seed=seed
    )
    ours = noiseless - _fast_step(
        model, x, y, noise_multiplier=SIGMA, batch_size=batch_size, seed=seed
    )
    theirs = noiseless - _opacus_step(
        model, x, y, noise_multiplier=SIGMA, batch_size=batch_size, seed=seed + 100
    )
    expected_std = SIGMA * CLIP / batch_size
    n = ours.numel()  # ~1.4e4 independent coordinates: std known to ~0.6 %
    assert n > 10_000
    # 5 %: far inside a factor of B = 4 (or 64) either way.
    assert ours.std().item() == pytest.approx(expected_std, rel=0.05)
    assert theirs.std().item() == pytest.approx(expected_std, rel=0.05)
    assert abs(ours.mean().item()) < 5 * expected_std / n**0.5
    # The whole step: ours and Opacus's minus the same noiseless step are draws
    # of one distribution, N(0, (σC/B)²) per coordinate.
    ours_np, theirs_np = ours.double().numpy(), theirs.double().numpy()
    assert stats.ks_2samp(ours_np, theirs_np).pvalue > 1e-3
    assert stats.kstest(ours_np, "norm", args=(0.0, expected_std)).pvalue > 1e-3


@pytest.mark.parametrize("batch_size", [4, 64])
def test_a_noise_scale_off_by_a_factor_of_b_fails_the_check(batch_size):
    # The tolerance above is meaningful: the step with σC/B² (or σC) is refused.
    model, x, y = _model_and_batch(batch_size)
    noiseless = _fast_step(
        model, x, y, noise_multiplier=0.0, batch_size=batch_size, seed=0
    )
    noise = noiseless - _fast_step(
        model, x, y, noise_multiplier=SIGMA, batch_size=batch_size, seed=0
    )
    expected_std = SIGMA * CLIP / batch_size
    for wrong in (noise / batch_size, noise * batch_size):
        assert wrong.std().item() != pytest.approx(expected_std, rel=0.05)
        assert (
            stats.kstest(
                wrong.double().numpy(), "norm", args=(0.0, expected_std)
            ).pvalue
            < 1e-6
        )

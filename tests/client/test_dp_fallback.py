"""DP-SGD for a model the fast path does not cover: Opacus trains it, same privacy.

The model mixes layers fedge's book-keeping path supports (Opacus's DPLSTM,
whose per-step layers are Linear, and a Linear head) with layers it does not
(Embedding, LayerNorm), as a user's own text model would. The references are
Opacus's own classes (GradSampleModule + DPOptimizer, its RDP accountant),
driven here directly.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import Context, RecordDict
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.layers import DPLSTM
from opacus.optimizers import DPOptimizer
from scipy import stats
from torch import nn

from fedge.client import dp_path
from fedge.client.dp_path import choose_dp_path
from fedge.client.dp_training import make_private_step, poisson_batches, train_private
from fedge.client.node_data import load_node_data
from fedge.client.privacy_ledger import PrivacyLedger, ledger_path
from fedge.client.private_round import train_private_round
from fedge.shared import keys
from fedge.shared.config import default_run_config, from_run_config
from fedge.shared.datasets import load_builtin
from fedge.shared.models import build_model, default_spec
from fedge.shared.privacy_history import Release

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook")
VOCAB = 16


class TextNet(nn.Module):
    """Embedding → DPLSTM → LayerNorm → Linear over token ids given as floats.

    With the defaults, the recurrent layer holds most parameters (fallback:
    hooks); with a large ``vocab`` the Embedding does (fallback: ghost).
    """

    def __init__(
        self, dim: int = 8, hidden: int = 12, classes: int = 3, vocab: int = VOCAB
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = DPLSTM(dim, hidden, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(x.flatten(1).long()))
        return self.head(self.norm(out[:, -1]))


def text_data(n: int, steps: int = 7, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (n, steps), generator=g).float()
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def opacus_hooks_reference(model, x, y, batches, *, lr, momentum, clip, expected):
    """Parameters after Opacus's own hooks-mode DP-SGD (σ = 0) on ``batches``."""
    reference = copy.deepcopy(model)
    gsm = GradSampleModule(reference, loss_reduction="mean")
    optimizer = DPOptimizer(
        torch.optim.SGD(reference.parameters(), lr=lr, momentum=momentum),
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=expected,
    )
    for idx in batches:
        optimizer.zero_grad()
        if len(idx):
            F.cross_entropy(gsm(x[idx]), y[idx]).backward()
        else:  # an empty Poisson batch: no gradient, still a step
            for p in reference.parameters():
                p.grad_sample = torch.zeros(0, *p.shape)
        optimizer.step()
    return reference


# (model, the fallback it gets, why): 1,056 of 1,247 parameters in the DPLSTM;
# 3,200 of 3,575 in the Embedding.
MIXED = [
    (lambda: TextNet(), "hooks", "Linear and Embedding layers hold 167 of the 1247"),
    (lambda: TextNet(dim=16, hidden=4, vocab=200), "ghost", "ghost clipping trains"),
]


@pytest.mark.parametrize(("make_model", "mode", "why"), MIXED)
def test_the_mixed_model_is_outside_the_fast_path_and_the_log_says_why(
    make_model, mode, why, caplog, monkeypatch
):
    monkeypatch.setattr(dp_path, "_logged", set())  # logged once per process
    torch.manual_seed(0)
    model = make_model()
    x, _ = text_data(4)
    path = choose_dp_path(model, x[:2])
    assert path.mode == mode
    assert why in path.reason
    assert "embed (Embedding)" in path.reason and "norm (LayerNorm)" in path.reason
    assert "rnn" not in path.reason and "head" not in path.reason  # fast-path layers
    with caplog.at_level(logging.INFO, logger="fedge.client.dp_path"):
        train_private(
            model,
            x.numpy(),
            np.zeros(4, int),
            noise_multiplier=1.0,
            sample_rate=0.5,
            steps=1,
            learning_rate=0.1,
            momentum=0.0,
            max_grad_norm=1.0,
            seed=0,
        )
    (record,) = [r for r in caplog.records if r.name == "fedge.client.dp_path"]
    assert record.levelno == logging.WARNING  # a node's INFO lines go nowhere
    assert f"DP-SGD path '{mode}': fedge's fast path does not support embed" in (
        record.getMessage()
    )


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("make_model", "mode", "why"), MIXED)
def test_sigma_zero_train_private_equals_opacus_hooks_on_the_same_poisson_batches(
    make_model, mode, why, seed
):
    torch.manual_seed(seed)
    model = make_model()
    n, q, steps, clip = 30, 0.25, 6, 0.3
    x, y = text_data(n, seed=seed)
    result = train_private(
        copy.deepcopy(model),
        x.numpy(),
        y.numpy(),
        noise_multiplier=0.0,
        sample_rate=q,
        steps=steps,
        learning_rate=0.5,
        momentum=0.9,
        max_grad_norm=clip,
        seed=seed,
    )
    assert result.grad_sample_mode == mode
    # The same Poisson batches: train_private's sampler is seeded by the first
    # of two states its seed spawns (the second seeds the noise).
    sampling_seed = int(np.random.SeedSequence(seed).generate_state(2)[0])
    sampler = torch.Generator().manual_seed(sampling_seed)
    batches = list(
        poisson_batches(num_examples=n, sample_rate=q, steps=steps, generator=sampler)
    )
    assert len({len(b) for b in batches}) > 1  # Poisson: sizes vary
    reference = opacus_hooks_reference(
        model,
        x,
        y,
        batches,
        lr=0.5,
        momentum=0.9,
        clip=clip,
        expected=round(q * n),
    )
    moved = 0.0
    for name, p in reference.named_parameters():
        torch.testing.assert_close(result.state_dict[name], p, atol=1e-5, rtol=0)
        moved = max(moved, float((p.detach() - model.state_dict()[name]).abs().max()))
    assert moved > 1e-2  # the comparison is of a trained model, not of the start


@pytest.mark.parametrize("mode", ["ghost", "hooks"])
def test_sigma_zero_step_equals_opacus_hooks_with_a_reused_linear(mode):
    # A Linear applied twice rules ghost clipping out ("parameter tying").
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, 6)
            self.fc = nn.Linear(6, 6)
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            h = self.embed(x.long()).mean(1)
            return self.head(torch.tanh(self.fc(torch.tanh(self.fc(h)))))

    torch.manual_seed(0)
    model = Twice()
    x, y = text_data(12)
    path = choose_dp_path(model, x[:2])
    assert path.mode == "hooks"
    assert "ran more than once in one forward pass: fc (Linear)" in path.reason
    if mode == "ghost":
        return  # ghost cannot train it: only the choice is checked
    batches = [[0, 2, 5], [1, 3, 4, 6, 7], list(range(12))]
    net = copy.deepcopy(model)
    step = make_private_step(
        net,
        grad_sample_mode=path.mode,
        noise_multiplier=0.0,
        max_grad_norm=0.2,
        expected_batch_size=4,
        learning_rate=0.5,
        momentum=0.0,
        generator=torch.Generator().manual_seed(0),
    )
    for idx in batches:
        step.step(x[idx], y[idx])
    step.close()
    reference = opacus_hooks_reference(
        model, x, y, batches, lr=0.5, momentum=0.0, clip=0.2, expected=4
    )
    for p, r in zip(net.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, r, atol=1e-5, rtol=0)


def _one_step(model, x, y, *, mode, sigma, clip, batch, seed):
    net = copy.deepcopy(model)
    step = make_private_step(
        net,
        grad_sample_mode=mode,
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=batch,
        learning_rate=1.0,
        momentum=0.0,
        generator=torch.Generator().manual_seed(seed),
    )
    step.step(x, y)
    step.close()
    return net


@pytest.mark.parametrize("mode", ["ghost", "hooks"])
@pytest.mark.parametrize("seed", [0, 1])
def test_fallback_noise_has_std_sigma_c_over_b(mode, seed):
    sigma, clip, batch = 1.3, 0.5, 16
    torch.manual_seed(seed)
    model = TextNet(dim=32, hidden=48)  # ~16k coordinates: std known to ~1 %
    x, y = text_data(batch, seed=seed)
    quiet = _one_step(model, x, y, mode=mode, sigma=0.0, clip=clip, batch=batch, seed=0)
    noisy = _one_step(
        model, x, y, mode=mode, sigma=sigma, clip=clip, batch=batch, seed=seed
    )
    noise = torch.cat(
        [
            (q - p).detach().flatten()
            for p, q in zip(noisy.parameters(), quiet.parameters(), strict=True)
        ]
    ).double()
    expected_std = sigma * clip / batch
    assert noise.numel() > 15_000
    assert noise.std().item() == pytest.approx(expected_std, rel=0.05)
    assert abs(noise.mean().item()) < 5 * expected_std / noise.numel() ** 0.5
    assert stats.kstest(noise.numpy(), "norm", args=(0.0, expected_std)).pvalue > 1e-3
    # The check has teeth: noise off by the batch size either way is refused.
    for wrong in (noise / batch, noise * batch):
        assert (
            stats.kstest(wrong.numpy(), "norm", args=(0.0, expected_std)).pvalue < 1e-6
        )


def _frozen_copy(model, frozen_prefixes):
    net = copy.deepcopy(model)
    for name, p in net.named_parameters():
        p.requires_grad_(not name.startswith(frozen_prefixes))
    return net


@pytest.mark.parametrize(
    ("make_model", "frozen", "expected_mode"),
    [
        # Frozen Embedding and LayerNorm: what remains trainable is fast-path.
        (lambda: TextNet(), ("embed", "norm"), "fast"),
        # A frozen recurrent backbone under an unsupported trainable layer.
        (lambda: TextNet(), ("rnn",), "ghost"),
        # A registry MLP with its first layer frozen.
        (lambda: build_model(default_spec("mlp", (7,), 3)), ("net.1.",), "fast"),
    ],
)
def test_frozen_parameters_get_no_gradient_no_noise_and_no_change(
    make_model, frozen, expected_mode
):
    torch.manual_seed(0)
    net = _frozen_copy(make_model(), frozen)
    x, y = text_data(20)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    result = train_private(
        net,
        x.numpy(),
        y.numpy(),
        noise_multiplier=5.0,  # loud noise: any leak onto a frozen weight shows
        sample_rate=0.3,
        steps=4,
        learning_rate=0.5,
        momentum=0.9,
        max_grad_norm=1.0,
        seed=0,
    )
    assert result.grad_sample_mode == expected_mode
    frozen_names = [n for n, p in net.named_parameters() if not p.requires_grad]
    trainable_names = [n for n, p in net.named_parameters() if p.requires_grad]
    assert frozen_names and trainable_names
    for name in frozen_names:
        assert torch.equal(result.state_dict[name], before[name]), name
        assert net.get_parameter(name).grad is None, name
    for name in trainable_names:
        assert not torch.equal(result.state_dict[name], before[name]), name


def test_ledger_and_epsilon_of_a_fallback_model_equal_opacus_accountant(
    tmp_path: Path,
):
    run_config = {
        **default_run_config(),
        "dp-mode": "sample",
        "noise-multiplier": 1.1,
        "target-epsilon": 50.0,
        "target-delta": 1e-4,
        "local-epochs": 1,
        "batch-size": 32,
    }
    config = from_run_config(run_config)
    node_config = {"partition-id": 0, "num-partitions": 3, "state-dir": str(tmp_path)}
    reference = load_builtin("digits", "test")
    data = load_node_data(node_config, config.data, reference.preprocessing)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, size=data.train.x.shape).astype(np.float32)
    train = dataclasses.replace(data.train, x=tokens)
    context = Context(
        run_id=1,
        node_id=7,
        node_config=node_config,
        state=RecordDict(),
        run_config=run_config,
    )
    torch.manual_seed(0)
    model = TextNet(classes=10)
    n = len(train)
    q, steps = 32 / n, round(n / 32)
    accountant = RDPAccountant()
    for server_round in (1, 2):
        figures = train_private_round(
            model,
            train,
            config=config,
            context=context,
            server_round=server_round,
            fedge_run_id="run-fallback",
        )
        for _ in range(steps):
            accountant.step(noise_multiplier=1.1, sample_rate=q)
        assert figures[keys.REFUSED] == 0
        assert figures[keys.SAMPLE_RATE] == pytest.approx(q)
        assert figures[keys.DP_ROUND_STEPS] == steps
        assert figures[keys.EPSILON] == pytest.approx(
            accountant.get_epsilon(delta=1e-4), rel=1e-6
        )
    ledger = PrivacyLedger.load(
        ledger_path(tmp_path, "run-fallback"), "run-fallback", node_key="partition:0/3"
    )
    assert ledger.history.releases == (
        Release(1, 1.1, q, steps),
        Release(2, 1.1, q, steps),
    )

"""DP-SGD local training (Abadi et al., 2016) with Opacus's privacy model.

Each step draws a Poisson batch (every example joins independently with
probability ``sample_rate``), clips every example's gradient to
``max_grad_norm``, sums, adds Gaussian noise of standard deviation
``noise_multiplier * max_grad_norm`` and divides by the expected batch size,
then takes an SGD-with-momentum step. This is exactly the mechanism Opacus's
accountants assume, so :mod:`fedge.shared.privacy` can account for it.

Interchangeable paths compute the clipped noisy gradient:

``"fast"``
    :class:`fedge.client.dp_clipping.ClippedGradients` (book-keeping: one backward,
    no materialised per-sample gradients for Linear layers); supports Linear,
    Conv1d/Conv2d and GroupNorm, i.e. every registry model.
``"ghost"``
    Opacus's ghost clipping (``GradSampleModuleFastGradientClipping`` +
    ``DPOptimizerFastGradientClipping``).
``"hooks"`` / ``"functorch"``
    Opacus's ``GradSampleModule`` + ``DPOptimizer``: the reference, and the
    fallback for any layer Opacus can train.

``"auto"`` (default) picks the cheapest that applies
(:func:`fedge.client.dp_path.choose_dp_path`) and logs which and why. Tests check
that all give the same update for the same batches. Only parameters with
``requires_grad`` get gradients, noise and updates, on every path.

Augmentation multiplicity (``augment_multiplicity`` K >= 1,
:mod:`fedge.shared.augmentation`): each step trains on K augmented views of every
example in its Poisson batch, and each example's K gradients are averaged
before the clip, on the fast path and on Opacus's hooks; Opacus's ghost
clipping clips rows, so ``"auto"`` picks the hooks instead, and ``"ghost"``
with K >= 1 is refused. The sampling, noise and steps are those of the run
without it, so is the privacy accounting.

The FedProx term ``mu/2 ||w - w_global||^2`` does not depend on the data, so
its gradient ``mu (w - w_global)`` is added after the noise, as post-processing
that costs no privacy (inside the loss, Opacus would silently drop it: its
per-sample gradients only see data-dependent terms).

Opacus is imported only where it is used (validation and the ``"hooks"`` /
``"functorch"`` paths): the fast path trains without loading it, which saves a
deployed node about a second per message.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedge.client.dp_clipping import ClippedGradients
from fedge.client.dp_path import choose_dp_path, log_dp_path
from fedge.client.sgd import MomentumSGD
from fedge.client.weight_averaging import WeightAverage
from fedge.shared.augmentation import (
    augment_generator,
    augment_views,
    check_augmentable,
)
from fedge.shared.errors import ConfigError, DataError, ModelError
from fedge.shared.private_model import check_private_model

logger = logging.getLogger(__name__)

GRAD_SAMPLE_MODES = ("auto", "fast", "ghost", "hooks", "functorch")


@dataclass(frozen=True)
class PrivateTrainResult:
    """What one round of DP-SGD produced.

    ``train_loss`` (mean per-example cross-entropy over the last epoch's
    batches) is computed from private data without noise: it is for local logs
    and is not covered by the ε of the ledger.
    """

    state_dict: dict[str, torch.Tensor]
    train_loss: float
    num_examples: int
    grad_sample_mode: str


def validate_private_model(model: nn.Module) -> None:
    """Raise :class:`ModelError` if Opacus cannot make ``model`` private.

    :func:`fedge.shared.private_model.check_private_model`: Opacus's
    ``ModuleValidator`` (imported only for a model holding a layer type it
    has a rule for), every offending layer named with the fix.
    """
    check_private_model(model)


def poisson_batches(
    *, num_examples: int, sample_rate: float, steps: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """Index tensors of ``steps`` Poisson batches (possibly empty), seeded."""
    for _ in range(steps):
        included = torch.rand(num_examples, generator=generator) < sample_rate
        yield included.nonzero().flatten()


class PrivateStep:
    """One DP-SGD optimiser step on a given batch; built by :func:`make_private_step`.

    ``step(x, y, views=K)`` updates the model in place and returns the batch's
    summed per-example loss (0 for an empty batch, which still gets noise).
    ``x`` holds K rows per label, example i's views in rows ``i*K`` to
    ``i*K + K - 1``; each example's gradient is the mean over its views,
    clipped as one.

    Parameters
    ----------
    model : nn.Module
        Its trainable parameters are updated.
    noise_multiplier : float
        σ; the noise on the clipped sum has std ``σ * max_grad_norm``.
    max_grad_norm : float
        Per-example clipping bound C.
    expected_batch_size : int
        Divides the noisy sum (Opacus's ``loss_reduction="mean"``): ``q * n``.
    learning_rate, momentum : float
        SGD settings (momentum buffers live as long as this object).
    generator : torch.Generator
        Source of the noise.
    proximal_mu : float, default 0
        FedProx coefficient.
    global_params : sequence of Tensor, optional
        FedProx anchor; defaults to the parameters' values at construction.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        learning_rate: float,
        momentum: float,
        generator: torch.Generator,
        proximal_mu: float = 0.0,
        global_params: Sequence[torch.Tensor] | None = None,
    ) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.noise_multiplier = noise_multiplier
        self.noise_std = noise_multiplier * max_grad_norm
        self.max_grad_norm = max_grad_norm
        self.expected_batch_size = expected_batch_size
        self.generator = generator
        self.proximal_mu = proximal_mu
        if proximal_mu > 0:
            source = global_params if global_params is not None else self.params
            self.global_params = [g.detach().clone() for g in source]
            if [g.shape for g in self.global_params] != [p.shape for p in self.params]:
                raise ModelError(
                    "global_params must match the model's trainable parameters in "
                    "order and shape."
                )
        self.learning_rate = learning_rate
        self.momentum = momentum

    def _add_proximal(self, grads: list[torch.Tensor]) -> None:
        if self.proximal_mu > 0:
            drift = torch._foreach_sub(
                [p.detach() for p in self.params], self.global_params
            )
            torch._foreach_add_(grads, drift, alpha=self.proximal_mu)

    def step(self, x: torch.Tensor, y: torch.Tensor, *, views: int = 1) -> float:
        """Take one DP-SGD step on ``(x, y)``; return the summed per-example loss."""
        raise NotImplementedError

    def close(self) -> None:
        """Remove any hooks from the model."""


class _FastStep(PrivateStep):
    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        # Not torch.optim: it imports torch._dynamo, seconds a deployed node
        # would pay on every message (client/sgd.py).
        self.sgd = MomentumSGD(
            self.params, lr=self.learning_rate, momentum=self.momentum
        )
        self.clipper = ClippedGradients(model)
        self.noise = torch.empty_like(self.clipper.flat_grad)

    def step(self, x: torch.Tensor, y: torch.Tensor, *, views: int = 1) -> float:
        # Dividing by the expected batch size is folded into the clip factors
        # and the noise scale, which saves a pass over every gradient. An empty
        # Poisson batch gives zeros: it still releases noise and is a step.
        scale = 1.0 / self.expected_batch_size
        grads, loss_sum, _ = self.clipper.clipped_sum(
            x, y, max_grad_norm=self.max_grad_norm, scale=scale, views=views
        )
        if self.noise_std > 0:
            # One draw into one buffer for all parameters: two calls in all.
            torch.randn(self.noise.shape, generator=self.generator, out=self.noise)
            self.clipper.flat_grad.add_(self.noise, alpha=self.noise_std * scale)
        self._add_proximal(grads)
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g
        self.sgd.step()
        return float(loss_sum)

    def close(self) -> None:
        self.clipper.close()


class _OpacusStep(PrivateStep):
    """Opacus's ``GradSampleModule`` (``"hooks"`` / ``"functorch"``) + ``DPOptimizer``."""

    def __init__(self, model: nn.Module, *, mode: str, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.sgd = torch.optim.SGD(
            self.params, lr=self.learning_rate, momentum=self.momentum, fused=True
        )
        self._wrap(model, mode)

    def _wrap(self, model: nn.Module, mode: str) -> None:
        from opacus.grad_sample.utils import prepare_module
        from opacus.optimizers import DPOptimizer

        self.module = prepare_module(
            model, mode, batch_first=True, loss_reduction="mean"
        )
        self.optimizer = self._dp_optimizer(DPOptimizer)

    def _dp_optimizer(self, optimizer_class: Any) -> Any:
        """Wrap the SGD in ``optimizer_class``, ``DPOptimizer`` or its ghost subclass.

        Both modes noise and clip with this step's σ, clipping norm, expected
        batch size and generator, set here once.
        """
        return optimizer_class(
            self.sgd,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=self.expected_batch_size,
            loss_reduction="mean",
            generator=self.generator,
        )

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> Any:
        return F.cross_entropy(self.module(x), y)

    def _no_examples(self) -> None:
        for p in self.params:
            p.grad_sample = torch.zeros(0, *p.shape)

    def _average_views(self, views: int) -> None:
        """Each example's per-sample gradient: the mean over its views' rows."""
        for p in self.params:
            rows = p.grad_sample
            if isinstance(rows, list):  # a layer that ran more than once
                rows = torch.cat(rows, dim=0)
            p.grad_sample = rows.view(-1, views, *rows.shape[1:]).mean(1)

    def step(self, x: torch.Tensor, y: torch.Tensor, *, views: int = 1) -> float:
        self.optimizer.zero_grad()
        loss_sum = 0.0
        if len(y):
            with warnings.catch_warnings():
                # Opacus's hooks on a first layer whose input needs no gradient.
                warnings.filterwarnings("ignore", message="Full backward hook")
                loss = self._loss(x, y.repeat_interleave(views))
                loss.backward()
            # The loss is the mean over rows; the sum over examples of each
            # example's mean over its views is that times the examples.
            loss_sum = float(loss.detach()) * len(y)
            if views > 1:
                self._average_views(views)
        else:
            self._no_examples()
        self.optimizer.pre_step()  # clip, sum, add noise, divide: sets p.grad
        self._add_proximal([p.grad for p in self.params])
        self.sgd.step()
        return loss_sum

    def close(self) -> None:
        self.module.to_standard_module()


class _GhostStep(_OpacusStep):
    """Opacus's ghost clipping (Li et al., 2022), the fallback's cheaper mode.

    Clip factors come from per-example gradient norms (Linear and Embedding
    layers: without forming the gradients); the loss's ``backward`` runs a
    second backward weighted by them, which leaves the clipped sum in
    ``p.grad``.
    """

    def _wrap(self, model: nn.Module, mode: str) -> None:
        from opacus.grad_sample import GradSampleModuleFastGradientClipping
        from opacus.optimizers import DPOptimizerFastGradientClipping
        from opacus.utils.fast_gradient_clipping_utils import (
            DPLossFastGradientClipping,
        )

        self.module = GradSampleModuleFastGradientClipping(
            model,
            batch_first=True,
            loss_reduction="mean",
            max_grad_norm=self.max_grad_norm,
            use_ghost_clipping=True,
        )
        self.optimizer = self._dp_optimizer(DPOptimizerFastGradientClipping)
        self.criterion = DPLossFastGradientClipping(
            self.module, self.optimizer, nn.CrossEntropyLoss(), loss_reduction="mean"
        )

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> Any:
        return self.criterion(self.module(x), y)

    def _no_examples(self) -> None:
        for p in self.params:  # the clipped sum of no examples
            p.grad = torch.zeros_like(p)

    def step(self, x: torch.Tensor, y: torch.Tensor, *, views: int = 1) -> float:
        if views > 1:
            raise ConfigError(
                "Opacus's ghost clipping clips each input row, so it cannot "
                f"average an example's {views} augmented views before the clip; "
                "use grad_sample_mode 'hooks' or 'auto' with augmentation "
                "multiplicity."
            )
        return super().step(x, y)

    def close(self) -> None:
        super().close()
        for p in self.params:  # Opacus's per-step book-keeping on the parameters
            for attribute in ("_norm_sample", "_forward_counter"):
                if hasattr(p, attribute):
                    delattr(p, attribute)


def make_private_step(
    model: nn.Module, *, grad_sample_mode: str = "auto", **kwargs: object
) -> PrivateStep:
    """Build the DP-SGD step for ``model`` (keyword arguments of :class:`PrivateStep`).

    Raises
    ------
    ConfigError
        On an unknown ``grad_sample_mode``.
    ModelError
        If ``"fast"`` is asked for a model it does not support.
    """
    mode = resolve_grad_sample_mode(model, grad_sample_mode)
    if mode == "fast":
        return _FastStep(model, **kwargs)
    step_class = _GhostStep if mode == "ghost" else _OpacusStep
    return step_class(model, mode=mode, **kwargs)


def resolve_grad_sample_mode(
    model: nn.Module, grad_sample_mode: str, example: torch.Tensor | None = None
) -> str:
    """``"auto"`` → the path :func:`fedge.client.dp_path.choose_dp_path` picks (logged).

    ``example`` (a few inputs) lets it check whether ghost clipping applies;
    without one, a model the fast path does not cover gets ``"hooks"``.
    """
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ConfigError(
            f"grad_sample_mode must be one of {list(GRAD_SAMPLE_MODES)}, "
            f"got {grad_sample_mode!r}."
        )
    if grad_sample_mode == "auto":
        path = choose_dp_path(model, example)
        log_dp_path(path)
        return path.mode
    return grad_sample_mode


def train_private(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    learning_rate: float,
    momentum: float,
    max_grad_norm: float,
    seed: int | None = None,
    proximal_mu: float = 0.0,
    global_params: Sequence[torch.Tensor] | None = None,
    grad_sample_mode: str = "auto",
    check_model: bool = True,
    augment_multiplicity: int = 0,
    augment_seed: Sequence[int] = (),
    ema_decay: float = 0.0,
) -> PrivateTrainResult:
    """Train ``model`` in place with ``steps`` DP-SGD steps of rate ``sample_rate``.

    The privacy numbers come from the node's plan
    (:func:`fedge.shared.privacy_plan.plan_privacy`), so what is trained is exactly
    what the budget check approved and the ledger records.

    Parameters
    ----------
    model : nn.Module
        Holds the global weights on entry; trained in place.
    x, y : ndarray
        Preprocessed inputs (float) and integer labels, n examples.
    noise_multiplier : float
        σ, calibrated once for the whole planned run (not per round); 0 = no
        noise, which gives no privacy (ε = ∞).
    sample_rate : float
        Poisson sampling rate q in (0, 1]; the expected batch size q·n divides
        the noisy sum.
    steps : int
        DP-SGD steps (>= 1), e.g. ``round(1 / q) * local_epochs``.
    learning_rate, momentum : float
        SGD settings.
    max_grad_norm : float
        Per-example clipping bound C; the noise has std σ·C on the clipped sum.
    seed : int, optional
        Seeds batch sampling and noise, for tests and debugging. Leave it None
        in real training: anyone who can guess the seed can subtract the
        noise, which voids the guarantee. None draws fresh OS entropy.
    proximal_mu : float, default 0
        FedProx coefficient; its gradient ``mu (w - w_global)`` is added to the
        privatised gradient.
    global_params : sequence of Tensor, optional
        ``w_global`` in ``model.parameters()`` order; defaults to the weights
        the model holds on entry.
    grad_sample_mode : {"auto", "fast", "ghost", "hooks", "functorch"}
        Which path computes per-sample gradients (see module docstring).
    check_model : bool, default True
        Run :func:`validate_private_model` first; False only for a caller that
        already validated a model of the same spec.
    augment_multiplicity : int, default 0
        K >= 1: every step trains on K augmented views of each example of its
        batch, each example's gradient averaged over its views before the
        clip (:mod:`fedge.shared.augmentation`); 0 = no augmentation.
    augment_seed : sequence of int
        Seeds the views with the step index, e.g. ``(model_seed, round)``.
    ema_decay : float, default 0
        > 0: the model ends holding the exponential moving average of its
        weights over the steps (:class:`fedge.client.weight_averaging.WeightAverage`),
        not the last iterate: post-processing, the privacy numbers unchanged.

    Returns
    -------
    PrivateTrainResult
        Plain parameter names (no ``_module.`` prefix). The release to record
        in the privacy ledger is the caller's ``(noise_multiplier,
        sample_rate, steps)``: nothing here changes them.

    Raises
    ------
    ConfigError
        On invalid settings, or augmentation of examples that are neither
        images nor series.
    DataError
        If x and y do not match or are empty.
    ModelError
        If Opacus cannot make the model private.
    """
    _check_settings(
        sample_rate,
        steps,
        learning_rate,
        momentum,
        noise_multiplier,
        max_grad_norm,
        augment_multiplicity,
    )
    inputs = torch.as_tensor(np.asarray(x, dtype=np.float32))
    labels = torch.as_tensor(np.asarray(y).astype(np.int64))
    if len(inputs) != len(labels) or len(inputs) == 0:
        raise DataError(
            f"DP training needs as many labels as inputs, at least one: got "
            f"{len(inputs)} inputs and {len(labels)} labels."
        )
    if augment_multiplicity:
        check_augmentable(tuple(inputs.shape[1:]))
    if check_model:
        validate_private_model(model)
    n = len(inputs)
    average = WeightAverage(model, decay=ema_decay)
    sampling_seed, noise_seed = np.random.SeedSequence(seed).generate_state(2)
    sampler = torch.Generator().manual_seed(int(sampling_seed))
    model.train()
    mode = resolve_grad_sample_mode(model, grad_sample_mode, example=inputs[:2])
    if augment_multiplicity and mode == "ghost" and grad_sample_mode == "auto":
        mode = "hooks"  # ghost clipping clips rows, not an example's views
        logger.warning(
            "DP-SGD path 'hooks' instead of 'ghost': augmentation multiplicity "
            "averages each example's views before the clip, which Opacus's ghost "
            "clipping cannot"
        )
    stepper = make_private_step(
        model,
        grad_sample_mode=mode,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=max(1, round(sample_rate * n)),
        learning_rate=learning_rate,
        momentum=momentum,
        generator=torch.Generator().manual_seed(int(noise_seed)),
        proximal_mu=proximal_mu,
        global_params=global_params,
    )
    # The loss reported is over the last epoch's worth of steps (round(1/q)).
    last_epoch = steps - max(1, round(1 / sample_rate))
    loss_sum, seen = 0.0, 0
    try:
        for step, idx in enumerate(
            poisson_batches(
                num_examples=n, sample_rate=sample_rate, steps=steps, generator=sampler
            )
        ):
            if augment_multiplicity:
                views = augment_views(
                    inputs[idx],
                    multiplicity=augment_multiplicity,
                    generator=augment_generator(augment_seed, step),
                )
                loss = stepper.step(views, labels[idx], views=augment_multiplicity)
            else:
                loss = stepper.step(inputs[idx], labels[idx])
            average.update()
            if step >= last_epoch:
                loss_sum += loss
                seen += len(idx)
    finally:
        stepper.close()
    if ema_decay > 0:
        average.copy_to_model()
    logger.debug(
        "DP-SGD: %s steps, q=%.4g, σ=%.4g, mode=%s",
        steps,
        sample_rate,
        noise_multiplier,
        mode,
    )
    return PrivateTrainResult(
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        train_loss=loss_sum / seen if seen else math.nan,
        num_examples=n,
        grad_sample_mode=mode,
    )


def _check_settings(
    sample_rate: float,
    steps: int,
    learning_rate: float,
    momentum: float,
    noise_multiplier: float,
    max_grad_norm: float,
    augment_multiplicity: int,
) -> None:
    problems = []
    if not 0 < sample_rate <= 1:
        problems.append(f"sample_rate must be in (0, 1], got {sample_rate}")
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        problems.append(f"steps must be an integer >= 1, got {steps!r}")
    if not learning_rate > 0:
        problems.append(f"learning_rate must be > 0, got {learning_rate}")
    if not 0 <= momentum < 1:
        problems.append(f"momentum must be in [0, 1), got {momentum}")
    if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
        problems.append(
            f"noise_multiplier must be finite and >= 0, got {noise_multiplier}"
        )
    if isinstance(augment_multiplicity, bool) or augment_multiplicity < 0:
        problems.append(
            f"augment_multiplicity must be an integer >= 0, got {augment_multiplicity!r}"
        )
    if not (max_grad_norm > 0 and math.isfinite(max_grad_norm)):
        problems.append(f"max_grad_norm must be finite and > 0, got {max_grad_norm}")
    if problems:
        raise ConfigError("Invalid DP training settings: " + "; ".join(problems) + ".")

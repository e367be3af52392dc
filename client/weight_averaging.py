"""Parameter averaging: an exponential moving average of the weights over local steps.

De et al. (2022, "Unlocking high-accuracy differentially private image
classification through scale") release an EMA of DP-SGD's iterates rather than
the last one: each iterate carries fresh noise, and averaging them cancels
part of it. The average is computed from the iterates alone, which DP-SGD has
already made private, so it is post-processing and costs no privacy: the
ledger and ε of a round are those of its steps, whatever the decay.

The average is bias-corrected as Adam's moments are (Kingma & Ba, 2015): it
starts from zero and is divided by ``1 - decay**t`` after ``t`` steps, so it is
a weighted mean of the iterates after each step, weights proportional to
``decay**(t - i)``, and never pulls towards the weights the round started from
(with a handful of local steps, an EMA started at those would mostly release
them). ``decay = 0`` is the last iterate.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from fedge.shared.errors import ConfigError


class WeightAverage:
    """Bias-corrected exponential moving average of a model's trainable parameters.

    Parameters
    ----------
    model : nn.Module
        Its parameters with ``requires_grad`` are averaged (frozen ones do not
        move, so their average is themselves).
    decay : float
        In [0, 1); 0 keeps the last iterate.

    Raises
    ------
    ConfigError
        If ``decay`` is outside [0, 1).
    """

    def __init__(self, model: nn.Module, *, decay: float) -> None:
        if not 0 <= decay < 1:
            raise ConfigError(
                f"ema-decay must be in [0, 1) (0 = off), got {decay}; the node "
                "trains nothing with it."
            )
        self.decay = decay
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.sums = [torch.zeros_like(p, dtype=torch.float64) for p in self.params]
        self.steps = 0

    def update(self) -> None:
        """Fold the parameters' current values in (call after every step)."""
        self.steps += 1
        with torch.no_grad():
            for total, p in zip(self.sums, self.params, strict=True):
                total.mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)

    def averaged(self) -> list[torch.Tensor]:
        """Return the bias-corrected averages (the parameters, before any step)."""
        if self.steps == 0:
            return [p.detach().clone() for p in self.params]
        correction = 1 - self.decay**self.steps
        return [
            (total / correction).to(p.dtype)
            for total, p in zip(self.sums, self.params, strict=True)
        ]

    def copy_to_model(self) -> None:
        """Load the averages into the model's parameters."""
        load_parameters(self.params, self.averaged())


def load_parameters(
    params: Iterable[torch.Tensor], values: Iterable[torch.Tensor]
) -> None:
    """Copy ``values`` into ``params`` in place, in order."""
    with torch.no_grad():
        for p, value in zip(params, values, strict=True):
            p.copy_(value)

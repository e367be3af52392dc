"""Plain (non-private) local training: seeded mini-batch SGD with momentum.

The DP-SGD path lives in :mod:`fedge.client.dp_training`; both accept the FedProx
proximal term (Li et al., 2020), which pulls local weights towards the global
model by ``mu / 2 * ||w - w_global||^2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedge.client.sgd import MomentumSGD


@dataclass(frozen=True)
class TrainResult:
    """What a round of local training produced."""

    train_loss: float  # mean cross-entropy over the batches of the last epoch
    steps: int
    num_examples: int


def proximal_term(
    model: nn.Module, global_params: Sequence[torch.Tensor], mu: float
) -> torch.Tensor:
    """``mu / 2 * ||w - w_global||^2`` over the trainable parameters."""
    squared = sum(
        (p - g).pow(2).sum()
        for p, g in zip(model.parameters(), global_params, strict=True)
    )
    return 0.5 * mu * squared


def train_plain(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    momentum: float,
    seed: int,
    proximal_mu: float = 0.0,
) -> TrainResult:
    """Train ``model`` in place on ``(x, y)``.

    Parameters
    ----------
    model : nn.Module
        Trained in place.
    x, y : ndarray
        Preprocessed inputs and integer labels.
    epochs, batch_size, learning_rate, momentum
        The usual SGD settings.
    seed : int
        Seeds the shuffling, so a node's round is reproducible.
    proximal_mu : float, default 0
        FedProx proximal coefficient; 0 is plain FedAvg local training.
    """
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.from_numpy(x)
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
    global_params = [p.detach().clone() for p in model.parameters()]
    # Not torch.optim, which imports torch._dynamo (seconds per deployed message).
    optimizer = MomentumSGD(model.parameters(), lr=learning_rate, momentum=momentum)
    model.train()
    steps = 0
    epoch_loss = 0.0
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        losses = []
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
            if proximal_mu > 0:
                loss = loss + proximal_term(model, global_params, proximal_mu)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            steps += 1
        epoch_loss = float(np.mean(losses))
    return TrainResult(train_loss=epoch_loss, steps=steps, num_examples=len(inputs))

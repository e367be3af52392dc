"""Evaluate a model on a labelled array: the loss and the classification metrics.

Both sides use it: the server for central evaluation on the held-out split, the
clients for federated evaluation on their local test split.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedge.shared.metrics import accuracy, classification_metrics


def _loss_and_probabilities(
    model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int
) -> tuple[float, np.ndarray]:
    model.eval()
    with torch.inference_mode():
        logits = torch.cat(
            [
                model(torch.from_numpy(x[i : i + batch_size]))
                for i in range(0, len(x), batch_size)
            ]
        )
        labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
        loss = float(nn.functional.cross_entropy(logits, labels))
        return loss, torch.softmax(logits, dim=1).numpy()


def evaluate_model(
    model: nn.Module, x: np.ndarray, y: np.ndarray, *, batch_size: int = 512
) -> dict[str, float]:
    """Return ``loss`` (mean cross-entropy) plus :func:`classification_metrics`.

    Parameters
    ----------
    model : nn.Module
        Returns logits of shape (n, num_classes).
    x, y : ndarray
        Inputs (already preprocessed) and integer labels.
    batch_size : int, default 512
        Inference batch size; only bounds memory.
    """
    loss, probabilities = _loss_and_probabilities(model, x, y, batch_size)
    return {"loss": loss, **classification_metrics(y, probabilities)}


def evaluate_loss_accuracy(
    model: nn.Module, x: np.ndarray, y: np.ndarray, *, batch_size: int = 512
) -> dict[str, float]:
    """``loss`` and ``accuracy`` only, as :func:`evaluate_model` computes them.

    What a node's federated evaluation replies; it needs no scikit-learn.
    """
    loss, probabilities = _loss_and_probabilities(model, x, y, batch_size)
    return {"loss": loss, "accuracy": accuracy(y, probabilities)}

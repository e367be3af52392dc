"""Fixed random-convolution features and a linear head: DP-SGD trains the head only.

A feature extractor that never sees private data costs no privacy, and the
noise DP-SGD adds then falls on a few thousand head weights instead of a
whole network (Tramèr & Boneh, 2021, "Differentially Private Learning Needs
Better Features"). The extractor here is a function of the model seed and the
input shape alone:

images ``(channels, height, width)``
    each example standardised over its own pixels; seeded 3x3 convolution
    filters (each centred and of unit norm) with biases drawn uniformly in
    [-1, 1], not from data; ReLU; average pooling to a 4x4 grid.
time series ``(channels, steps)``
    each channel of each example standardised over its own steps; seeded
    length-9 kernels at dilations 1, 2, 4, ... (as ROCKET, Dempster et al.
    2020, but with data-independent biases in [-1, 1]); per kernel the
    maximum and the proportion of positive values (PPV).

The feature vector of each example is then standardised (zero mean, unit
variance over its D features, so of norm sqrt(D)): every example's head
gradient then has the norm ``||dLoss/dlogits|| * sqrt(D + 1)``, whatever the
input's scale, and clipping treats examples alike. (A unit-norm vector would
do the same, but the head would then need learning rates ~sqrt(D) times
larger for the same progress.) Nothing in
the extractor depends on any other example, so the features are the same
whatever data the extractor has seen.

The extractor's weights are parameters with ``requires_grad`` off, listed by
:attr:`FixedFeaturesLinear.fixed_parameters`: ``trainable`` never turns them
on, no optimiser touches them, and they cross the wire once per node like any
frozen parameter (:mod:`fedge.shared.trainable`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Widths of the default extractors: images 64 filters x 16 cells = 1024
# features; series 256 kernels x 2 = 512 features.
DEFAULT_IMAGE_FILTERS = 64
DEFAULT_SERIES_KERNELS = 256
POOL_GRID = 4  # images: average pooling to a POOL_GRID x POOL_GRID grid
SERIES_KERNEL_LENGTH = 9
_EPS = 1e-5  # standardisation guard for constant inputs


def default_width(input_shape: tuple[int, ...]) -> int:
    """Return the default extractor's filters (images) or kernels (series)."""
    return DEFAULT_IMAGE_FILTERS if len(input_shape) == 3 else DEFAULT_SERIES_KERNELS


def _standardise(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Zero mean, unit standard deviation over ``dims`` of each example."""
    mean = x.mean(dim=dims, keepdim=True)
    var = (x - mean).square().mean(dim=dims, keepdim=True)
    return (x - mean) / torch.sqrt(var + _EPS)


def _fixed_conv(conv: nn.Conv1d | nn.Conv2d) -> None:
    """Draw ``conv``'s filters (centred, unit norm) and biases in [-1, 1]; freeze."""
    with torch.no_grad():
        weight = torch.randn_like(conv.weight)
        flat = weight.flatten(1)
        flat = flat - flat.mean(dim=1, keepdim=True)
        flat = flat / flat.norm(dim=1, keepdim=True).clamp_min(_EPS)
        conv.weight.copy_(flat.view_as(conv.weight))
        conv.bias.uniform_(-1.0, 1.0)
    conv.requires_grad_(False)


class RandomImageFeatures(nn.Module):  # type: ignore[misc]  # nn.Module is Any: mypy skips torch (pyproject)
    """Seeded random 3x3 filters, ReLU, average pooling: images to a flat vector."""

    def __init__(self, input_shape: tuple[int, ...], filters: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.conv = nn.Conv2d(channels, filters, kernel_size=3, padding=1)
        _fixed_conv(self.conv)
        # Floor division: a few border rows are dropped when the size does
        # not divide (AvgPool2d exports to ONNX at any size, unlike
        # AdaptiveAvgPool2d).
        self.pool = nn.AvgPool2d(
            (max(1, height // POOL_GRID), max(1, width // POOL_GRID))
        )
        with torch.no_grad():
            self.num_features = int(self(torch.zeros(1, *input_shape)).shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the features of the batch ``x`` of shape ``(B, C, H, W)``."""
        x = _standardise(x, (1, 2, 3))
        return self.pool(F.relu(self.conv(x))).flatten(1)


class RandomSeriesFeatures(nn.Module):  # type: ignore[misc]  # nn.Module is Any: mypy skips torch (pyproject)
    """ROCKET-like: seeded dilated kernels, data-independent biases, max and PPV."""

    def __init__(self, input_shape: tuple[int, ...], kernels: int) -> None:
        super().__init__()
        channels, steps = input_shape
        # Dilations 1, 2, 4, ... while the kernel still spans the series
        # (ROCKET's range), the kernels split evenly between them.
        reach = max(1, (steps - 1) // (SERIES_KERNEL_LENGTH - 1))
        dilations = [2**i for i in range(int(math.log2(reach)) + 1)]
        share = [
            kernels // len(dilations) + (i < kernels % len(dilations))
            for i in range(len(dilations))
        ]
        self.convs = nn.ModuleList(
            nn.Conv1d(
                channels,
                count,
                kernel_size=SERIES_KERNEL_LENGTH,
                dilation=d,
                padding=d * (SERIES_KERNEL_LENGTH // 2),
            )
            for d, count in zip(dilations, share, strict=True)
            if count
        )
        for conv in self.convs:
            _fixed_conv(conv)
        self.num_features = 2 * kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the features of the batch ``x`` of shape ``(B, C, steps)``."""
        x = _standardise(x, (2,))
        maxima, positives = [], []
        for conv in self.convs:
            out = conv(x)
            maxima.append(out.amax(dim=2))
            positives.append((out > 0).to(out.dtype).mean(dim=2))
        return torch.cat(maxima + positives, dim=1)


class FixedFeaturesLinear(nn.Module):  # type: ignore[misc]  # nn.Module is Any: mypy skips torch (pyproject)
    """A fixed extractor (``features``) and a trainable linear layer (``head``).

    Parameters
    ----------
    input_shape : tuple of int
        ``(channels, height, width)`` images or ``(channels, steps)`` series.
    num_classes : int
        Number of logits.
    width : int
        Image filters, or series kernels.
    """

    # Glob of the parameters that never train (shared.trainable honours it).
    fixed_parameters = "features.*"

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, width: int
    ) -> None:
        super().__init__()
        self.features: RandomImageFeatures | RandomSeriesFeatures
        if len(input_shape) == 3:
            self.features = RandomImageFeatures(input_shape, width)
        else:
            self.features = RandomSeriesFeatures(input_shape, width)
        self.head = nn.Linear(self.features.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits for the batch ``x``."""
        return self.head(_standardise(self.features(x), (1,)))

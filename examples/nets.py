"""A small residual CNN for 8x8 digits: a user's own architecture, ``nets.py:Net``.

fedge ships no residual network; this file is what a team would bring
(``fedge simulate --model examples/nets.py:Net``). Parameters are named
``backbone.*`` (the feature extractor) and ``head.*`` (the classifier), so
``trainable = "head.*"`` fine-tunes the head on top of a pretrained, frozen
backbone. GroupNorm rather than BatchNorm: DP-SGD needs per-example gradients,
which BatchNorm's batch statistics would mix (Opacus refuses it).

Self-contained on purpose: ``fedge simulate`` ships a ``.py`` model file alone,
so it imports only installed packages.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Return ``(channels, height, width)``: an image's own, or a flat square's.

    A table of 64 pixel columns (a CSV of the digits) arrives as ``(64,)`` and
    is viewed as one 8x8 channel; an image ``.npz`` arrives as ``(1, 8, 8)``.

    Raises
    ------
    ValueError
        If ``input_shape`` is neither an image nor a flat square number of pixels.
    """
    if len(input_shape) == 3:
        channels, height, width = input_shape
        return channels, height, width
    side = math.isqrt(input_shape[0]) if len(input_shape) == 1 else 0
    if side < 1 or side * side != input_shape[0]:
        raise ValueError(
            f"Net expects an image (C, H, W) or a square number of pixel columns, "
            f"got input_shape {input_shape}"
        )
    return 1, side, side


class ResidualBlock(nn.Module):
    """``relu(x + norm(conv(relu(norm(conv(x))))))``, He et al. 2016, GroupNorm."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, kernel_size=3, padding=1)
        self.norm1 = nn.GroupNorm(4, width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(4, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block's output, the shape of ``x``."""
        inner = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(x + self.norm2(self.conv2(inner)))


class Net(nn.Module):
    """Stem conv, two residual blocks, 2x2 average pooling, then a linear head.

    Parameters
    ----------
    input_shape : tuple of int
        One encoded example: ``(1, 8, 8)``, or ``(64,)`` for a table of pixels.
    num_classes : int
        Logits per example.
    width : int, default 16
        Channels of the backbone (a multiple of 4, the GroupNorm groups).
    """

    def __init__(
        self, *, input_shape: tuple[int, ...], num_classes: int, width: int = 16
    ) -> None:
        super().__init__()
        self.image_shape = image_shape(tuple(input_shape))
        self.backbone = nn.Sequential(
            nn.Conv2d(self.image_shape[0], width, kernel_size=3, padding=1),
            nn.GroupNorm(4, width),
            nn.ReLU(),
            ResidualBlock(width),
            ResidualBlock(width),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(width * 2 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (batch, num_classes)."""
        return self.head(self.backbone(x.reshape(-1, *self.image_shape)))

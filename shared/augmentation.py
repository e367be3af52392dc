"""Augmentation multiplicity for DP-SGD: K augmented views of every example.

De et al. (2022, "Unlocking High-Accuracy Differentially Private Image
Classification through Scale") train on K augmented views of each example in
the batch and average each example's K gradients *before* clipping: each
example still contributes one gradient of norm at most C, so the privacy
accounting (sampling rate, noise, steps) is that of the run without
augmentation. Repeating examples in the batch instead would let one example
contribute K clipped gradients and break that accounting.

The transforms are data-independent and seeded from ``(model seed, round,
step)``, so a run is reproducible:

images ``(channels, height, width)``
    a shift by up to ``max(1, round(size / 8))`` pixels along each axis, zero
    filled (a random crop of the zero-padded image). No flips: fedge cannot
    know whether a mirrored image keeps its class (a mirrored digit does not).
time series ``(channels, steps)``
    each channel scaled by a factor drawn from N(1, 0.1²), jitter from
    N(0, 0.05²) per value (series are standardised per channel by
    preprocessing, so these are fractions of a channel's spread), and a time
    shift by up to ``steps // 10`` steps, zero (the channel mean) filled.
tables
    none: no transform of a feature vector is known to keep its label, so
    augmentation is refused there.

Views of example i are rows ``i*K … i*K+K-1`` of the augmented batch, the
layout :class:`fedge.client.dp_clipping.ClippedGradients` and
:class:`fedge.client.dp_training.PrivateStep` group by.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedge.shared.errors import ConfigError

SERIES_SCALE_STD = 0.1
SERIES_JITTER_STD = 0.05
SERIES_SHIFT_FRACTION = 10  # shift by up to steps // 10
IMAGE_SHIFT_FRACTION = 8  # shift by up to round(size / 8) pixels, at least 1


def augment_generator(seed: Sequence[int], step: int) -> torch.Generator:
    """Return the generator of one step's views, seeded by ``(*seed, step)``."""
    state = np.random.SeedSequence([*seed, step]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def check_augmentable(
    input_shape: tuple[int, ...], *, multiplicity: int = 1, dp_mode: str = "sample"
) -> None:
    """Raise :class:`ConfigError` unless examples of this shape can be augmented.

    Nothing to check when ``multiplicity`` is 0 or ``dp_mode`` is not
    ``"sample"`` (only DP-SGD augments): the coordinator calls it before a run
    with the run's settings, a node before it trains.
    """
    if not multiplicity or dp_mode != "sample":
        return
    if len(input_shape) not in (2, 3):
        raise ConfigError(
            "'augment-multiplicity' needs images (channels, height, width) or "
            f"time series (channels, steps); got examples of shape {input_shape} "
            "(a table: no transform of a feature vector is known to keep its "
            "label). Set augment-multiplicity = 0. Nothing was trained."
        )


def augment_views(
    x: torch.Tensor, *, multiplicity: int, generator: torch.Generator
) -> torch.Tensor:
    """Return ``multiplicity`` augmented views of each example of ``x``.

    Parameters
    ----------
    x : Tensor
        ``(B, channels, height, width)`` images or ``(B, channels, steps)``
        series.
    multiplicity : int
        K >= 1 views per example.
    generator : torch.Generator
        Source of the transforms (:func:`augment_generator`).

    Returns
    -------
    Tensor
        ``(B * K, *x.shape[1:])``; example i's views are rows ``i*K`` to
        ``i*K + K - 1``.

    Raises
    ------
    ConfigError
        For examples that are neither images nor series (see
        :func:`check_augmentable`).
    """
    check_augmentable(tuple(x.shape[1:]))
    rows = x.repeat_interleave(multiplicity, dim=0)
    if len(rows) == 0:
        return rows
    if x.dim() == 4:
        return _shift_images(rows, generator)
    return _transform_series(rows, generator)


def _shifted_index(
    size: int, reach: int, count: int, generator: torch.Generator
) -> torch.Tensor:
    """``(count, size)`` indices into an axis zero-padded by ``reach`` on each side."""
    offsets = torch.randint(0, 2 * reach + 1, (count, 1), generator=generator)
    return offsets + torch.arange(size)


def _shift_images(rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n, _, height, width = rows.shape
    reach_h = max(1, round(height / IMAGE_SHIFT_FRACTION))
    reach_w = max(1, round(width / IMAGE_SHIFT_FRACTION))
    padded = torch.nn.functional.pad(rows, (reach_w, reach_w, reach_h, reach_h))
    ys = _shifted_index(height, reach_h, n, generator)
    xs = _shifted_index(width, reach_w, n, generator)
    batch = torch.arange(n)[:, None, None]
    # Advanced indexing gives (n, height, width, channels). The copy is in
    # PyTorch's default layout: with one channel, .contiguous() would keep
    # these strides, which convolutions then treat as channels-last, and
    # Opacus's per-sample convolution gradients come out wrong on such input.
    cropped = padded.permute(0, 2, 3, 1)[batch, ys[:, :, None], xs[:, None, :]]
    return cropped.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)


def _transform_series(rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n, channels, steps = rows.shape
    scale = 1 + SERIES_SCALE_STD * torch.randn(n, channels, 1, generator=generator)
    jitter = SERIES_JITTER_STD * torch.randn(n, channels, steps, generator=generator)
    varied = rows * scale + jitter
    reach = steps // SERIES_SHIFT_FRACTION
    if reach == 0:
        return varied
    padded = torch.nn.functional.pad(varied, (reach, reach))
    index = _shifted_index(steps, reach, n, generator)
    return torch.gather(padded, 2, index[:, None, :].expand(n, channels, steps))

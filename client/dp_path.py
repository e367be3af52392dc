"""Which per-example gradient path trains a model under DP-SGD, and why.

Every path computes the same thing (each example's gradient clipped to C,
summed, Gaussian noise, divided by the expected batch size), so the privacy
plan, ledger and accountant do not depend on the choice; only the cost does.

``"fast"``
    fedge's book-keeping (:mod:`fedge.client.dp_clipping`), when every trainable
    layer is one it supports: every registry model, and a user's model made
    of Linear, Conv1d/Conv2d, GroupNorm and Opacus's DP recurrent layers (or
    whose other layers are frozen).
``"ghost"``
    Opacus's ghost clipping (``GradSampleModuleFastGradientClipping``; Li et
    al., 2022): per-example norms of Linear and Embedding layers without
    forming their per-example gradients, other layers through Opacus's grad
    samplers, then a second backward weighted by the clip factors. Used where
    it pays and applies: such layers hold most of the trainable parameters
    (else the second backward costs more than the norms save: an Embedding +
    DPLSTM model stepped 6.5x plain with ghost, 5.5x with hooks), and none of
    them runs twice in one forward pass or shares its weights (Opacus refuses
    that, "parameter tying").
``"hooks"``
    Opacus's ``GradSampleModule``: every per-example gradient formed; works
    for any layer Opacus has a grad sampler (or functorch) for.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from fedge.client.dp_clipping import unsupported_layers

logger = logging.getLogger(__name__)

# Layer types Opacus computes ghost norms for (its NORM_SAMPLERS, exact types).
_GHOST_NORM_LAYERS = (nn.Linear, nn.Embedding)


@dataclass(frozen=True)
class DPPath:
    """The chosen path (``"fast"``, ``"ghost"`` or ``"hooks"``) and the reason."""

    mode: str
    reason: str


def choose_dp_path(model: nn.Module, example: torch.Tensor | None) -> DPPath:
    """Pick the cheapest path that can train ``model`` (see the module docstring).

    Parameters
    ----------
    model : nn.Module
        In the mode it trains in (its forward runs once on ``example``).
    example : Tensor or None
        A batch of one or a few inputs, to see which layers run more than once
        per forward pass (a reused Linear rules ghost clipping out). None: the
        reuse cannot be checked, and Opacus's hooks are chosen over ghost.
    """
    unsupported = unsupported_layers(model)
    if not unsupported:
        return DPPath(
            "fast",
            "every trainable layer is one fedge's fast path supports (Linear, "
            "Conv1d/Conv2d, GroupNorm, Opacus's DP recurrent layers)",
        )
    why = "fedge's fast path does not support " + "; ".join(unsupported)
    blocker = ghost_blocker(model, example)
    if blocker is None:
        return DPPath("ghost", f"{why}: Opacus's ghost clipping trains it")
    return DPPath(
        "hooks",
        f"{why}, and Opacus's ghost clipping does not apply ({blocker}): "
        "Opacus's GradSampleModule hooks train it",
    )


def ghost_blocker(model: nn.Module, example: torch.Tensor | None) -> str | None:
    """Why Opacus's ghost clipping cannot (or need not) train ``model``; None if it can."""
    names = {module: name or "<root>" for name, module in model.named_modules()}
    ghost_layers = [
        m
        for m in model.modules()
        if type(m) in _GHOST_NORM_LAYERS
        and any(p.requires_grad for p in m.parameters(recurse=False))
    ]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    covered = sum(p.numel() for m in ghost_layers for p in m.parameters(recurse=False))
    if 2 * covered <= trainable:
        return (
            f"Linear and Embedding layers hold {covered} of the {trainable} "
            "trainable parameters: its second backward would cost more than "
            "ghost norms save"
        )
    owners = Counter(id(p) for m in ghost_layers for p in m.parameters(recurse=False))
    if any(count > 1 for count in owners.values()):
        return "Linear or Embedding layers share weights"
    if example is None:
        return "no example input to check that no layer runs twice"
    reused = [
        f"{names[m]} ({type(m).__name__})"
        for m, calls in _forward_calls(model, ghost_layers, example).items()
        if calls > 1
    ]
    if reused:
        return "ran more than once in one forward pass: " + ", ".join(reused)
    return None


def _forward_calls(
    model: nn.Module, layers: list[nn.Module], example: torch.Tensor
) -> Counter[nn.Module]:
    """How many times each of ``layers`` runs in one forward pass on ``example``."""
    calls: Counter[nn.Module] = Counter()

    def count(module: nn.Module, *_: object) -> None:
        calls[module] += 1

    handles = [layer.register_forward_hook(count) for layer in layers]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return calls


_logged: set[str] = set()


def log_dp_path(path: DPPath) -> None:
    """Say once per process which path trains and why (a node trains every round).

    A fallback is a warning: each step costs more than on the fast path (see
    ``benchmarks/dp_overhead.py``), and a node's INFO lines go nowhere by
    default, while its warnings reach the node's (and the simulation's) log.
    """
    line = f"DP-SGD path '{path.mode}': {path.reason}"
    if line not in _logged:
        _logged.add(line)
        level = logging.INFO if path.mode == "fast" else logging.WARNING
        logger.log(level, "%s", line)

"""Which parameters train and travel: ``trainable`` globs, freezing, the exchanged arrays.

``trainable = "GLOB,GLOB"`` (fnmatch over parameter names, case-sensitive)
picks the parameters every node trains and every round exchanges; the others
are frozen: ``requires_grad`` is off, so no optimiser (plain SGD, the fast
DP-SGD path, Opacus's) gives them a gradient or noise, and they stay exactly
the initial weights. A parameter registered under several names (Opacus's
``DPGRU`` also exposes its cells' weights under ``nn.GRU``'s names) is
trainable when any of its names matches, and all its names follow.

A model may name parameters that never train, whatever ``trainable`` says,
in a ``fixed_parameters`` attribute (globs, as ``trainable``): the
extractor of ``random-conv-linear`` (:mod:`fedge.shared.fixed_features`), whose
point is to see no private data.

What crosses the wire each round are the *exchanged* arrays: the model's
state_dict without the frozen parameters. Buffers (running statistics and the
like) are exchanged: training may change them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from torch import nn

from fedge.shared.config import trainable_patterns
from fedge.shared.errors import ConfigError

# How many of the model's parameter names an error lists before "...".
_NAMES_SHOWN = 20


@dataclass(frozen=True)
class TrainableSelection:
    """The parameters ``trainable`` selects, every name under which each is registered.

    Parameters
    ----------
    trainable : tuple of str
        Names of the parameters trained and exchanged every round.
    frozen : tuple of str
        Names of the others (empty when every parameter trains).
    """

    trainable: tuple[str, ...]
    frozen: tuple[str, ...]

    def exchanged(self, state_names: Iterable[str]) -> list[str]:
        """Return the state_dict entries sent each round: all but the frozen."""
        frozen = set(self.frozen)
        return [name for name in state_names if name not in frozen]


def select_trainable(model: nn.Module, trainable: str) -> TrainableSelection:
    """Match the ``trainable`` globs against ``model``'s parameter names.

    Raises
    ------
    ConfigError
        When the value is not a list of globs, or any glob matches no
        parameter (naming each such glob and the model's parameters).
    """
    patterns = trainable_patterns(trainable)
    named = list(model.named_parameters(remove_duplicate=False))
    names = [name for name, _ in named]
    if not patterns:
        raise ConfigError(
            "'trainable' must be comma-separated globs over parameter names "
            f'("*" = every parameter), got {trainable!r}'
        )
    unmatched = [p for p in patterns if not any(fnmatchcase(n, p) for n in names)]
    if unmatched:
        shown = ", ".join(names[:_NAMES_SHOWN]) + (
            ", ..." if len(names) > _NAMES_SHOWN else ""
        )
        raise ConfigError(
            f"'trainable' pattern(s) {unmatched} match no parameter of the model "
            f"({type(model).__name__}); its {len(names)} parameter names are: "
            f"{shown}. Fix the glob (fnmatch: '*' matches dots too, e.g. "
            "'classifier.*'). Nothing was started."
        )
    fixed_globs = str(getattr(model, "fixed_parameters", ""))
    fixed = {
        id(param)
        for name, param in named
        if fixed_globs
        and any(fnmatchcase(name, p) for p in trainable_patterns(fixed_globs))
    }
    chosen = {
        id(param)
        for name, param in named
        if any(fnmatchcase(name, p) for p in patterns) and id(param) not in fixed
    }
    return TrainableSelection(
        trainable=tuple(n for n, p in named if id(p) in chosen),
        frozen=tuple(n for n, p in named if id(p) not in chosen),
    )


def freeze(model: nn.Module, selection: TrainableSelection) -> None:
    """Turn ``requires_grad`` on for the trainable parameters and off for the rest."""
    trainable = set(selection.trainable)
    for name, param in model.named_parameters(remove_duplicate=False):
        param.requires_grad_(name in trainable)


def trainable_size_bytes(model: nn.Module, selection: TrainableSelection) -> int:
    """Bytes of the trainable parameters' values (each counted once)."""
    trainable = set(selection.trainable)
    return sum(
        p.numel() * p.element_size()
        for name, p in model.named_parameters()
        if name in trainable
    )

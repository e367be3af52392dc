"""Start a run from pretrained weights: read a state_dict file, check it fits, hash it.

``initial-weights`` names a file on the coordinator: ``torch.save(model.state_dict(),
PATH)`` of the same architecture, or a previous run's ``model.pt`` (the same
format). It is read with ``torch.load(weights_only=True)``, so a file can hold
tensors and plain containers but never runs code. Every name and shape is
checked against the model before anything starts, and all mismatches are
reported in one error, as :func:`fedge.shared.config.from_run_config` reports every
config problem at once. The file's SHA-256 is what the run's provenance
records: a path says where weights were, the hash says which.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedge.shared.config import TrainConfig
from fedge.shared.errors import ConfigError, ModelError
from fedge.shared.run_folder import (
    PROVENANCE_FROZEN,
    PROVENANCE_INITIAL_WEIGHTS,
    PROVENANCE_INITIAL_WEIGHTS_SHA256,
    PROVENANCE_TRAINABLE,
)
from fedge.shared.trainable import TrainableSelection, select_trainable


@dataclass(frozen=True)
class InitialWeights:
    """Weights a run starts from, and which file they came from.

    Parameters
    ----------
    path : str
        The file, as given in ``initial-weights`` (user's home expanded).
    sha256 : str
        Hex SHA-256 of the file's bytes.
    state_dict : dict of str to Tensor
        What the file holds, checked to fit the model.
    """

    path: str
    sha256: str
    state_dict: dict[str, torch.Tensor]


def file_sha256(path: str | Path) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_initial_weights(path: str) -> InitialWeights:
    """Read a state_dict file (``torch.load(weights_only=True)``) and hash it.

    Raises
    ------
    ConfigError
        The file does not exist or is not a file.
    ModelError
        torch cannot read it (corrupt, truncated, or pickled code that
        ``weights_only`` refuses), or it holds something other than a mapping
        of parameter names to tensors.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        what = "is a folder, not a file" if file.is_dir() else "not found"
        raise ConfigError(
            f"initial-weights {path} {what} on the coordinator; give the path of a "
            "PyTorch state_dict file (torch.save(model.state_dict(), PATH)) or a "
            "previous run's model.pt. Nothing was started."
        )
    digest = file_sha256(file)
    try:
        loaded: Any = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        # torch's messages run over many lines; the first says what failed.
        reason = (str(e).strip().splitlines() or [""])[0]
        raise ModelError(
            f"initial-weights {path} cannot be read as PyTorch weights "
            f"(torch.load(weights_only=True) failed: {type(e).__name__}: {reason}); "
            "give a state_dict saved with torch.save(model.state_dict(), PATH). "
            "Nothing was started."
        ) from e
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        got = type(loaded).__name__
        if isinstance(loaded, Mapping):
            odd = [k for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
            got = f"a {got} whose entries {odd[:5]} are not tensors"
        raise ModelError(
            f"initial-weights {path} holds {got}, expected a state_dict (parameter "
            "name -> tensor) as torch.save(model.state_dict(), PATH) writes it. "
            "Nothing was started."
        )
    return InitialWeights(path=str(file), sha256=digest, state_dict=dict(loaded))


def weight_mismatches(
    expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor]
) -> list[str]:
    """Every difference in names and shapes between a model's state and some weights.

    Returns one line each: ``missing 'name' (expected shape (a, b))``,
    ``unexpected 'name' (shape (a, b))``, ``wrong shape 'name': expected (a, b),
    got (c, d)``; missing names in the model's order, then unexpected ones in
    the file's, then wrong shapes. Empty when the weights fit.
    """
    missing = [
        f"missing {name!r} (expected shape {tuple(tensor.shape)})"
        for name, tensor in expected.items()
        if name not in got
    ]
    unexpected = [
        f"unexpected {name!r} (shape {tuple(tensor.shape)})"
        for name, tensor in got.items()
        if name not in expected
    ]
    wrong = [
        f"wrong shape {name!r}: expected {tuple(tensor.shape)}, "
        f"got {tuple(got[name].shape)}"
        for name, tensor in expected.items()
        if name in got and tuple(got[name].shape) != tuple(tensor.shape)
    ]
    return [*missing, *unexpected, *wrong]


def load_initial_weights(model: nn.Module, path: str) -> InitialWeights:
    """Read ``path`` (:func:`read_initial_weights`) and load it into ``model``.

    Raises
    ------
    ConfigError, ModelError
        As :func:`read_initial_weights`; ModelError also when names or shapes
        differ from the model's, listing every mismatch in one message.
    """
    weights = read_initial_weights(path)
    problems = weight_mismatches(model.state_dict(), weights.state_dict)
    if problems:
        raise ModelError(
            f"initial-weights {path} do not fit the model ({type(model).__name__}): "
            f"{len(problems)} mismatch(es): " + "; ".join(problems) + ". Start from "
            "weights saved from this very architecture (the same model, input "
            "shape and classes). Nothing was started."
        )
    model.load_state_dict(weights.state_dict)
    return weights


@dataclass(frozen=True)
class StartingPoint:
    """What a run starts from: the initial weights (if any) and the trainable split.

    Parameters
    ----------
    weights : InitialWeights or None
        The ``initial-weights`` file, None for ``model-seed``'s random weights.
    selection : TrainableSelection
        The parameters ``trainable`` selects; the rest stay frozen.
    """

    weights: InitialWeights | None
    selection: TrainableSelection

    def provenance(self) -> dict[str, Any]:
        """Return what ``model.json``'s provenance records about the start."""
        entries: dict[str, Any] = {}
        if self.weights is not None:
            entries[PROVENANCE_INITIAL_WEIGHTS] = self.weights.path
            entries[PROVENANCE_INITIAL_WEIGHTS_SHA256] = self.weights.sha256
        if self.selection.frozen:
            entries[PROVENANCE_TRAINABLE] = list(self.selection.trainable)
            entries[PROVENANCE_FROZEN] = list(self.selection.frozen)
        return entries


def prepare_start(model: nn.Module, train: TrainConfig) -> StartingPoint:
    """Load ``initial-weights`` into ``model`` and select its ``trainable`` parameters.

    Called by the coordinator before its run folder is touched, and by
    ``fedge simulate`` before any process starts, so a bad file or glob is one
    error and nothing else happens.

    Raises
    ------
    ConfigError, ModelError
        As :func:`load_initial_weights` and
        :func:`fedge.shared.trainable.select_trainable`.
    """
    weights = (
        load_initial_weights(model, train.initial_weights)
        if train.initial_weights
        else None
    )
    return StartingPoint(weights, select_trainable(model, train.trainable))

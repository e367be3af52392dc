"""Check a node's data file and model code before it joins, as its ClientApp would.

``fedge node check`` prints what these find; each problem is raised naming the
file, column and row, or the model code and both SHA-256s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from fedge.shared.errors import DataError, FedgeError, ModelError

if TYPE_CHECKING:  # the data stack (pandas) loads only when a check runs
    from fedge.shared.datasets import Dataset
    from fedge.shared.model_reference import ModelIdentity


def check_node_file(
    path: Path, *, label_column: str, impute: str, reference: Path | None
) -> Dataset:
    """Load ``path`` as a node would, with the federation's preprocessing if known.

    Returns
    -------
    Dataset
        The encoded data.

    Raises
    ------
    DataError
        Naming the file, column and row of the first problem, or a reference
        ``model.json`` that is not one.
    """
    from fedge.shared.datasets import fit_file, load_file
    from fedge.shared.preprocessing import Preprocessing

    if reference is None:
        return fit_file(path, label_column=label_column, impute=impute)
    if reference.suffix == ".json":
        try:
            meta = json.loads(reference.read_text())
            preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{reference} is not a fedge model.json: {e}") from e
        return load_file(path, preprocessing)
    fitted = fit_file(reference, label_column=label_column, impute=impute)
    return load_file(path, fitted.preprocessing)


def check_node_model(
    reference: Path | None,
    *,
    model: str | None,
    model_sha256: str | None,
    input_shape: tuple[int, ...],
    num_classes: int,
) -> ModelIdentity | None:
    """Build the user's model the coordinator names, as this node's ClientApp would.

    The model is ``model``, else the one a ``reference`` ``model.json`` names;
    the expected identity is that ``model.json``'s (reference, SHA-256, package
    version), and ``model_sha256`` when given.

    Returns
    -------
    ModelIdentity or None
        This node's copy's identity; None when no user's model is named.

    Raises
    ------
    ModelError
        The code cannot be imported or built (see
        :func:`fedge.shared.model_reference.build_user_model`), or differs from the
        coordinator's (one line naming both).
    """
    from fedge.shared.model_reference import (
        build_user_model,
        is_model_reference,
    )
    from fedge.shared.run_folder import ModelInfo

    expected: ModelIdentity | None = None
    if reference is not None and reference.suffix == ".json":
        spec = ModelInfo.from_dict(
            json.loads(reference.read_text()), source=str(reference)
        ).spec
        expected = spec.identity
        if model is None and expected is not None:
            model = spec.name
    if model is None or not is_model_reference(model):
        if model_sha256:
            raise FedgeError(
                "--model-sha256 needs the user's model: give --model MODULE:CALLABLE"
            )
        return None
    if expected is not None and expected.reference != model:
        expected = None  # another model than model.json's: only --model-sha256 applies
    _, local = build_user_model(
        model, input_shape=input_shape, num_classes=num_classes, expected=expected
    )
    if model_sha256 and model_sha256.strip().lower() != local.sha256:
        raise ModelError(
            f"model {model!r}: this node's copy has sha256 {local.sha256}, the "
            f"coordinator's has {model_sha256.strip().lower()}; nothing would be "
            "trained: install the coordinator's version of the model code here"
        )
    return local

"""Read what a finished run left (model.json, model.pt, config.json) and its data.

Held-out examples (parity and accuracy) are the test split of the run's data;
calibration examples for static quantisation come from the training side.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_export.manifest import MODEL_META, MODEL_WEIGHTS, RUN_CONFIG
from shared.config import DATASET_FILE
from shared.datasets import BUILTIN_DATASETS, Dataset, load_builtin, load_file
from shared.errors import ModelError
from shared.models import ModelSpec, build_model
from shared.preprocessing import Preprocessing

logger = logging.getLogger(__name__)

MODEL_FORMAT = "fedge-model/1"


@dataclass(frozen=True)
class RunInputs:
    """A run folder's model, with everything needed to export it.

    Attributes
    ----------
    run_dir : Path
    spec : ModelSpec
    preprocessing : Preprocessing
    model_meta : dict
        ``model.json`` as read (provenance, privacy, metrics).
    config : dict
        ``config.json``'s ``"config"`` section (``RunConfig.to_dict()``).
    model : nn.Module
        Rebuilt with the saved weights, in eval mode.
    """

    run_dir: Path
    spec: ModelSpec
    preprocessing: Preprocessing
    model_meta: dict[str, Any]
    config: dict[str, Any]
    model: nn.Module

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One encoded example's shape: what the ONNX graph takes."""
        return tuple(self.preprocessing.input_shape)

    @property
    def dataset(self) -> str:
        """The run's dataset name (a built-in or ``"file"``)."""
        return str(self.config["data"]["dataset"])


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelError(
            f"{path} not found; is {path.parent} a finished fedge run folder "
            f"(it needs {MODEL_META}, {MODEL_WEIGHTS} and {RUN_CONFIG})?"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ModelError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def load_run(run_dir: str | Path) -> RunInputs:
    """Rebuild the final model of a run folder.

    Raises
    ------
    ModelError
        A file is missing or malformed, or the weights do not fit the spec.
    """
    run_dir = Path(run_dir)
    meta = _read_json(run_dir / MODEL_META)
    if meta.get("format") != MODEL_FORMAT:
        raise ModelError(
            f"{run_dir / MODEL_META}: format {meta.get('format')!r}, expected "
            f"{MODEL_FORMAT!r}"
        )
    config = _read_json(run_dir / RUN_CONFIG).get("config")
    if not isinstance(config, dict) or "data" not in config:
        raise ModelError(
            f"{run_dir / RUN_CONFIG} has no 'config' with a 'data' section"
        )
    spec = ModelSpec.from_dict(meta["spec"])
    preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    if math.prod(preprocessing.input_shape) != math.prod(spec.input_shape):
        raise ModelError(
            f"{run_dir / MODEL_META}: the preprocessing produces inputs of shape "
            f"{preprocessing.input_shape} but the model takes {spec.input_shape}"
        )
    weights_path = run_dir / MODEL_WEIGHTS
    if not weights_path.is_file():
        raise ModelError(f"{weights_path} not found; the run saved no final weights")
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors of many kinds
        raise ModelError(f"cannot read weights {weights_path}: {e}") from e
    model = build_model(spec)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ModelError(
            f"{weights_path} does not fit the spec in {MODEL_META}: {e}"
        ) from e
    return RunInputs(run_dir, spec, preprocessing, meta, config, model.eval())


def held_out_data(run: RunInputs) -> Dataset:
    """The run's test split: a built-in's test part, or the eval file.

    Raises
    ------
    ModelError
        An unknown dataset, or data whose encoding differs from the model's.
    """
    data_config = run.config["data"]
    if run.dataset in BUILTIN_DATASETS:
        dataset = load_builtin(run.dataset, "test")
        _check_encoding(run, dataset)
        return dataset
    if run.dataset == DATASET_FILE:
        return load_file(data_config["eval_data_path"], run.preprocessing)
    raise ModelError(
        f"{run.run_dir / RUN_CONFIG}: dataset {run.dataset!r} is neither a built-in "
        f"{list(BUILTIN_DATASETS)} nor {DATASET_FILE!r}"
    )


def calibration_data(
    run: RunInputs, *, size: int, seed: int = 0
) -> tuple[np.ndarray, str]:
    """A seeded sample of training-side examples, and a note on where from.

    A built-in's train split; for ``dataset = "file"`` the coordinator holds
    no training data, so the eval file is sampled (the int8 accuracy measured
    on that same file is then slightly optimistic; the manifest says so).
    """
    if run.dataset in BUILTIN_DATASETS:
        dataset = load_builtin(run.dataset, "train")
        note = f"{dataset.source}: training split of the built-in dataset"
    else:
        dataset = held_out_data(run)
        note = (
            f"{dataset.source}: the run's eval file (dataset='file' keeps no "
            "training data centrally; int8 accuracy on this file is optimistic)"
        )
    rng = np.random.default_rng(seed)
    take = rng.permutation(len(dataset))[: min(size, len(dataset))]
    return dataset.x[np.sort(take)], note


def _check_encoding(run: RunInputs, dataset: Dataset) -> None:
    if dataset.preprocessing.to_dict() != run.preprocessing.to_dict():
        raise ModelError(
            f"{run.run_dir / MODEL_META}: the model's preprocessing differs from "
            f"the built-in dataset {run.dataset!r}'s; held-out accuracy would be "
            "meaningless. Was the model trained on another version of fedge?"
        )

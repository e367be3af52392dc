"""Read what a finished run left (model.json, model.pt, config.json) and its data.

Held-out examples (parity and accuracy) are the test split of the run's data;
calibration examples for static quantisation come from the training side.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedge.shared.config import DATASET_FILE, RunConfig
from fedge.shared.datasets import BUILTIN_DATASETS, Dataset, load_builtin, load_file
from fedge.shared.errors import ModelError
from fedge.shared.models import ModelSpec, build_model
from fedge.shared.preprocessing import Preprocessing
from fedge.shared.run_folder import (
    CONFIG_FILE,
    MODEL_INFO_FILE,
    MODEL_WEIGHTS_FILE,
    ModelInfo,
    load_run_config,
    read_model_info,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunInputs:
    """A run folder's model, with everything needed to export it.

    Attributes
    ----------
    run_dir : Path
    model_info : ModelInfo
        ``model.json`` (spec, preprocessing, provenance, privacy, metrics).
    config : RunConfig
        The run's config, from ``config.json``.
    model : nn.Module
        Rebuilt with the saved weights, in eval mode.
    """

    run_dir: Path
    model_info: ModelInfo
    config: RunConfig
    model: nn.Module

    @property
    def spec(self) -> ModelSpec:
        """The model's architecture."""
        return self.model_info.spec

    @property
    def preprocessing(self) -> Preprocessing:
        """How raw inputs are encoded for the model."""
        return self.model_info.preprocessing

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One encoded example's shape: what the ONNX graph takes."""
        return tuple(self.preprocessing.input_shape)

    @property
    def dataset(self) -> str:
        """The run's dataset name (a built-in or ``"file"``)."""
        return self.config.data.dataset


def load_run_inputs(run_dir: str | Path) -> RunInputs:
    """Rebuild the final model of a run folder.

    Raises
    ------
    ModelError
        A file is missing or malformed, or the weights do not fit the spec.
    """
    run_dir = Path(run_dir)
    model_info = read_model_info(run_dir)
    config = load_run_config(run_dir)
    spec, preprocessing = model_info.spec, model_info.preprocessing
    if math.prod(preprocessing.input_shape) != math.prod(spec.input_shape):
        raise ModelError(
            f"{run_dir / MODEL_INFO_FILE}: the preprocessing produces inputs of shape "
            f"{preprocessing.input_shape} but the model takes {spec.input_shape}"
        )
    weights_path = run_dir / MODEL_WEIGHTS_FILE
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
            f"{weights_path} does not fit the spec in {MODEL_INFO_FILE}: {e}"
        ) from e
    return RunInputs(run_dir, model_info, config, model.eval())


def held_out_data(run: RunInputs) -> Dataset:
    """Return the run's test split: a built-in's test part, or the eval file.

    Raises
    ------
    ModelError
        An unknown dataset, or data whose encoding differs from the model's.
    """
    if run.dataset in BUILTIN_DATASETS:
        dataset = load_builtin(run.dataset, "test")
        _check_encoding(run, dataset)
        return dataset
    if run.dataset == DATASET_FILE:
        return load_file(run.config.data.eval_data_path, run.preprocessing)
    raise ModelError(
        f"{run.run_dir / CONFIG_FILE}: dataset {run.dataset!r} is neither a built-in "
        f"{list(BUILTIN_DATASETS)} nor {DATASET_FILE!r}"
    )


def calibration_data(
    run: RunInputs, *, size: int, seed: int = 0
) -> tuple[np.ndarray, str]:
    """Return a seeded sample of training-side examples, and a note on where from.

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
            f"{run.run_dir / MODEL_INFO_FILE}: the model's preprocessing differs from "
            f"the built-in dataset {run.dataset!r}'s; held-out accuracy would be "
            "meaningless. Was the model trained on another version of fedge?"
        )

"""The coordinator's model at round 0: architecture, initial weights, trainable split.

One function, so the ServerApp and ``fedge simulate``'s checks before any
process starts build the same model from the same config and refuse the same
bad ``initial-weights`` file or ``trainable`` glob.
"""

from __future__ import annotations

from torch import nn

from fedge.shared.config import RunConfig
from fedge.shared.initial_weights import StartingPoint, prepare_start
from fedge.shared.models import ModelSpec, build_model, default_spec
from fedge.shared.preprocessing import Preprocessing


def starting_model(
    config: RunConfig, preprocessing: Preprocessing
) -> tuple[ModelSpec, nn.Module, StartingPoint]:
    """Return the spec, the round-0 model and what it starts from.

    The model holds ``model-seed``'s random weights, overwritten by
    ``initial-weights`` when given; :class:`StartingPoint` names its trainable
    and frozen parameters.

    Raises
    ------
    ConfigError, ModelError
        A missing or unfit weights file, or a glob that matches no parameter
        (:func:`fedge.shared.initial_weights.prepare_start`).
    """
    spec = model_spec_for(config, preprocessing)
    model = build_model(spec, model_seed=config.train.model_seed)
    return spec, model, prepare_start(model, config.train)


def model_spec_for(config: RunConfig, preprocessing: Preprocessing) -> ModelSpec:
    """Return the spec of the run's model on data ``preprocessing`` describes.

    Raises
    ------
    ModelError
        For a user's model that cannot be resolved (:func:`fedge.shared.models.default_spec`).
    """
    return default_spec(
        config.train.model,
        preprocessing.input_shape,
        preprocessing.num_classes,
        activation=config.train.activation,
        fix_model=config.dp.fix_model,
    )

"""What every message would rebuild, built once per process: config and models.

The simulation engine runs many messages (of many virtual nodes) in each of a
few long-lived worker processes, so module-level caches pay off there; in a
deployment each message gets a fresh process and these caches simply start
empty (what must survive there lives in ``context.state`` and the node's
``state-dir``, see :mod:`fedge.client.private_round` and :mod:`fedge.client.node_cache`).

Keys are the full inputs (the run config's contents, the model spec's JSON),
so a changed run config or spec can never be served a stale object.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from torch import nn

from fedge.shared.config import RunConfig, from_run_config
from fedge.shared.models import ModelSpec, build_model

# A worker serves one run at a time; a few entries cover a resumed or second run.
MAX_CONFIGS = 8
MAX_MODELS = 4

_configs: OrderedDict[str, RunConfig] = OrderedDict()
_models: OrderedDict[str, nn.Module] = OrderedDict()


def typed_config(run_config: Mapping[str, Any]) -> RunConfig:
    """:func:`fedge.shared.config.from_run_config` of ``run_config``, once per contents.

    Raises
    ------
    ConfigError
        As ``from_run_config`` (an invalid config is not cached).
    """
    key = json.dumps(dict(run_config), sort_keys=True, default=repr)
    config = _configs.get(key)
    if config is None:
        config = from_run_config(run_config)
        _configs[key] = config
    _remember(_configs, key, config, MAX_CONFIGS)
    return config


def model_for(model_spec: str) -> nn.Module:
    """Return the network ``model_spec`` (:meth:`ModelSpec.to_json`) describes, built once.

    The caller loads the message's weights into it (every parameter and buffer
    is overwritten, see :func:`fedge.shared.records.load_record_into`); gradients left
    by a previous message are cleared here.

    Raises
    ------
    ModelError
        If the spec is invalid (not cached).
    """
    model = _models.get(model_spec)
    if model is None:
        model = build_model(ModelSpec.from_json(model_spec))
    model.zero_grad(set_to_none=True)
    _remember(_models, model_spec, model, MAX_MODELS)
    return model


def clear() -> None:
    """Forget everything (tests, and callers that change code under a process)."""
    _configs.clear()
    _models.clear()


def _remember(cache: OrderedDict[str, Any], key: str, value: Any, limit: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)

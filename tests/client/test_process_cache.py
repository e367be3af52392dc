"""Config and models built once per process, keyed by their full inputs."""

from __future__ import annotations

import pytest
import torch

from fedge.client import process_cache
from fedge.client.process_cache import model_for, typed_config
from fedge.shared.config import default_run_config
from fedge.shared.errors import ConfigError
from fedge.shared.models import default_spec


@pytest.fixture(autouse=True)
def _empty():
    process_cache.clear()
    yield
    process_cache.clear()


def test_same_run_config_is_parsed_once_and_a_changed_one_again():
    run_config = default_run_config()
    first = typed_config(run_config)
    assert typed_config(dict(run_config)) is first
    changed = typed_config({**run_config, "local-epochs": 7})
    assert changed.train.local_epochs == 7 and first.train.local_epochs != 7


def test_an_invalid_run_config_is_refused_every_time():
    bad = {**default_run_config(), "local-epochs": 0}
    for _ in range(2):
        with pytest.raises(ConfigError, match="local-epochs"):
            typed_config(bad)


def test_a_model_is_built_once_per_spec_and_left_without_gradients():
    spec = default_spec("mlp", (4,), 3).to_json()
    model = model_for(spec)
    model(torch.ones(2, 4)).sum().backward()
    again = model_for(spec)
    assert again is model
    assert all(p.grad is None for p in again.parameters())
    other = model_for(default_spec("mlp", (5,), 3).to_json())
    assert other is not model
    assert other(torch.ones(1, 5)).shape == (1, 3)

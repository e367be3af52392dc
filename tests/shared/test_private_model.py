"""Opacus's ModuleValidator on fedge's side: refuse naming the layer, or fix it."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from opacus.layers import DPLSTM
from torch import nn

from fedge.shared import models, private_model
from fedge.shared.config import default_run_config, from_run_config
from fedge.shared.errors import ConfigError, ModelError
from fedge.shared.models import ModelSpec, default_spec
from fedge.shared.private_model import (
    check_model_for_run,
    check_private_model,
    fix_private_model,
)

ROOT = Path(__file__).resolve().parents[2]


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.rnn = nn.LSTM(4, 5, batch_first=True)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.features(x)  # (B, 4, 6, 6)
        out, _ = self.rnn(maps.flatten(2).transpose(1, 2))
        return self.head(out[:, -1])


def test_incompatible_layers_are_refused_naming_path_type_and_fix():
    with pytest.raises(ModelError) as caught:
        check_private_model(Backbone())
    message = str(caught.value)
    assert "features.1 (BatchNorm2d): BatchNorm cannot support training" in message
    assert "rnn (LSTM): We do not support nn.LSTM" in message
    assert "set fix-model = true" in message
    assert "head (Linear)" not in message and "features.0" not in message


def test_a_frozen_batchnorm_is_refused_too():
    # Opacus validates trainable layers only; frozen, it still mixes the batch.
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model[1].requires_grad_(False)
    with pytest.raises(
        ModelError, match=r"1 \(BatchNorm1d\): a frozen .* keeps running statistics"
    ):
        check_private_model(model)


def test_a_frozen_lstm_is_accepted_and_eval_mode_is_restored():
    # A frozen layer needs no per-example gradient and mixes nothing.
    model = Backbone()
    model.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4))
    model.rnn.requires_grad_(False)
    model.eval()
    check_private_model(model)
    assert not model.training


def test_fix_replaces_with_opacus_layers_logs_each_and_then_passes(caplog):
    torch.manual_seed(0)
    model = Backbone()
    with caplog.at_level(logging.INFO, logger="fedge.shared.private_model"):
        fixed = fix_private_model(model)
    assert type(fixed.features[1]) is nn.GroupNorm
    assert type(fixed.rnn) is DPLSTM
    assert "fix-model: replaced features.1 (BatchNorm2d) with GroupNorm" in caplog.text
    assert "fix-model: replaced rnn (LSTM) with DPLSTM" in caplog.text
    assert type(model.features[1]) is nn.BatchNorm2d  # the original is untouched
    check_private_model(fixed)
    # DPLSTM keeps the LSTM's weights under the same names.
    for name, tensor in model.rnn.state_dict().items():
        assert torch.equal(fixed.rnn.state_dict()[name], tensor)
    x = torch.randn(3, 1, 8, 8)
    assert fixed(x).shape == (3, 2)


@pytest.mark.parametrize(("name", "shape"), [("mlp", (64,)), ("cnn", (1, 8, 8))])
def test_registry_models_pass_and_are_not_fixed_without_importing_opacus(name, shape):
    # A deployed node pays every import on every message (seconds for Opacus).
    code = textwrap.dedent(
        f"""
        import sys
        from fedge.shared.models import build_model, default_spec
        from fedge.shared.private_model import check_private_model, fix_private_model
        model = build_model(default_spec({name!r}, {shape!r}, 10))
        check_private_model(model)
        assert fix_private_model(model) is model
        fixed = build_model(default_spec({name!r}, {shape!r}, 10, fix_model=True))
        assert [type(m) for m in fixed.modules()] == [type(m) for m in model.modules()]
        print("opacus" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "False"


def test_fix_model_is_in_the_spec_and_survives_model_json():
    spec = default_spec("mlp", (4,), 2, fix_model=True)
    assert spec.to_dict()["fix_model"] is True
    assert ModelSpec.from_json(spec.to_json()) == spec
    # Without it, model.json is what it was before the key existed.
    assert "fix_model" not in default_spec("mlp", (4,), 2).to_dict()
    assert (
        ModelSpec.from_dict(default_spec("mlp", (4,), 2).to_dict()).fix_model is False
    )


def test_fix_model_key_defaults_to_false_and_must_be_a_bool():
    assert from_run_config({}, fill_defaults=True).dp.fix_model is False
    assert default_run_config()["fix-model"] is False
    assert from_run_config({"fix-model": True}, fill_defaults=True).dp.fix_model
    with pytest.raises(ConfigError, match="'fix-model' must be bool, got 'yes'"):
        from_run_config({"fix-model": "yes"}, fill_defaults=True)


@pytest.mark.parametrize(("dp_mode", "refused"), [("sample", True), ("none", False)])
def test_a_run_is_refused_before_it_starts_only_under_dp_sgd(
    monkeypatch, dp_mode, refused
):
    # The spec's model is built as every party builds it: here, one with BatchNorm.
    monkeypatch.setattr(models, "build_model", lambda spec: Backbone())
    config = from_run_config({"dp-mode": dp_mode}, fill_defaults=True)
    spec = default_spec("mlp", (4,), 2)
    if refused:
        with pytest.raises(ModelError, match=r"features.1 \(BatchNorm2d\)"):
            check_model_for_run(config, spec)
    else:
        check_model_for_run(config, spec)
    assert private_model.needs_opacus_check(Backbone())

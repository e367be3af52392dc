import dataclasses

import pytest
import torch
from opacus.validators import ModuleValidator
from torch import nn

from fedge.shared.errors import ModelError
from fedge.shared.models import ModelSpec, build_model, default_spec, for_export


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- output shapes
def test_mlp_on_30_features_gives_one_logit_per_class():
    model = build_model(default_spec("mlp", (30,), 2), model_seed=0)

    out = model(torch.zeros(5, 30))

    assert out.shape == (5, 2)


def test_cnn_on_8x8_grey_images():
    model = build_model(default_spec("cnn", (1, 8, 8), 10), model_seed=0)

    out = model(torch.zeros(4, 1, 8, 8))

    assert out.shape == (4, 10)


@pytest.mark.parametrize("input_shape", [(3, 10, 6), (1, 7, 5), (2, 4, 12)])
def test_cnn_on_non_square_images(input_shape):
    model = build_model(default_spec("cnn", input_shape, 3), model_seed=0)

    out = model(torch.randn(2, *input_shape))

    assert out.shape == (2, 3)


def test_auto_picks_cnn_for_images_and_mlp_for_vectors():
    assert default_spec("auto", (1, 8, 8), 10).name == "cnn"
    assert default_spec("auto", (30,), 2).name == "mlp"


def test_auto_picks_the_1d_cnn_for_time_series():
    assert default_spec("auto", (6, 100), 4).name == "cnn1d"


@pytest.mark.parametrize("name", ["cnn1d", "gru"])
@pytest.mark.parametrize("steps", [100, 37])
def test_series_models_give_one_logit_per_class_for_any_length(name, steps):
    model = build_model(default_spec(name, (6, 100), 4), model_seed=0)

    assert model(torch.randn(3, 6, steps)).shape == (3, 4)


def test_gru_exports_as_pytorchs_gru_computing_the_same_function():
    model = build_model(default_spec("gru", (3, 20), 5), model_seed=0)
    x = torch.randn(4, 3, 20)

    exported = for_export(model)

    assert any(type(m) is nn.GRU for m in exported.modules())
    # nn.GRU's own equations, written out: an independent reference.
    gru = next(m for m in exported.modules() if type(m) is nn.GRU)
    w_ih, w_hh = gru.weight_ih_l0.detach(), gru.weight_hh_l0.detach()
    b_ih, b_hh = gru.bias_ih_l0.detach(), gru.bias_hh_l0.detach()
    h = torch.zeros(4, gru.hidden_size)
    for t in range(20):
        gi, gh = x[:, :, t] @ w_ih.T + b_ih, h @ w_hh.T + b_hh
        r = torch.sigmoid(gi[:, :32] + gh[:, :32])
        z = torch.sigmoid(gi[:, 32:64] + gh[:, 32:64])
        n = torch.tanh(gi[:, 64:] + r * gh[:, 64:])
        h = (1 - z) * n + z * h
    reference = model.classifier(h)
    torch.testing.assert_close(exported(x), reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(x), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_cnn1d_exports_as_2d_convolutions_computing_the_same_function(activation):
    spec = dataclasses.replace(default_spec("cnn1d", (3, 40), 5), activation=activation)
    model = build_model(spec, model_seed=0).eval()
    x = torch.randn(4, 3, 40)

    exported = for_export(model)

    assert not any(isinstance(m, nn.Conv1d) for m in exported.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in exported.modules()) == 2
    # the 1-D model's own layers, applied one by one: an independent reference
    conv1, norm1, act1, conv2, norm2, act2 = list(model.features)[:6]
    h = act2(norm2(conv2(act1(norm1(conv1(x))))))
    reference = model.classifier(h.mean(dim=2))
    with torch.inference_mode():
        torch.testing.assert_close(exported(x), reference, atol=1e-5, rtol=1e-5)
        # any length, as the 1-D model
        torch.testing.assert_close(exported(x[..., :17]), model(x[..., :17]))


def test_models_without_a_swap_export_as_they_are():
    model = build_model(default_spec("cnn", (1, 8, 8), 3))

    assert for_export(model) is model


def test_mlp_on_image_shape_flattens_the_input():
    spec = default_spec("mlp", (1, 8, 8), 10)

    assert spec.input_shape == (64,)
    assert build_model(spec)(torch.zeros(3, 64)).shape == (3, 10)


def test_mlp_hidden_widths_give_the_layer_shapes():
    spec = ModelSpec(name="mlp", input_shape=(5,), num_classes=3, hidden=(7, 4))

    weight_shapes = [
        s for k, s in shapes(build_model(spec)).items() if k.endswith("weight")
    ]

    assert weight_shapes == [(7, 5), (4, 7), (3, 4)]


def test_cnn_channels_not_divisible_by_groups_still_build():
    # 6 channels cannot be split into the default 4 groups.
    spec = ModelSpec(
        name="cnn", input_shape=(1, 8, 8), num_classes=2, hidden=(6, 8, 16)
    )

    model = build_model(spec)

    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 2)


# ---------------------------------------------------------------- spec round trip
@pytest.mark.parametrize(
    "spec",
    [
        default_spec("mlp", (30,), 2),
        default_spec("cnn", (1, 8, 8), 10, activation="tanh"),
        default_spec("cnn1d", (6, 100), 4),
        default_spec("gru", (1, 361), 10),
        ModelSpec(
            name="cnn",
            input_shape=(3, 10, 6),
            num_classes=4,
            hidden=(8, 8, 8),
            groups=2,
        ),
    ],
)
def test_spec_json_round_trip_rebuilds_the_same_state_dict_shapes(spec):
    rebuilt = ModelSpec.from_json(spec.to_json())

    assert rebuilt == spec
    assert shapes(build_model(rebuilt)) == shapes(build_model(spec))


def test_from_dict_ignores_unknown_keys():
    data = {**default_spec("mlp", (4,), 2).to_dict(), "comment": "extra"}

    assert ModelSpec.from_dict(data) == default_spec("mlp", (4,), 2)


# ---------------------------------------------------------------- seeding
@pytest.mark.parametrize("seed", [0, 1, 123])
@pytest.mark.parametrize(
    "name,shape",
    [("mlp", (30,)), ("cnn", (1, 8, 8)), ("cnn1d", (6, 100)), ("gru", (6, 100))],
)
def test_seeded_init_is_identical(seed, name, shape):
    spec = default_spec(name, shape, 3)

    a = build_model(spec, model_seed=seed).state_dict()
    b = build_model(spec, model_seed=seed).state_dict()
    c = build_model(spec, model_seed=seed + 1).state_dict()

    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# ---------------------------------------------------------------- bad specs
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "rnn", "input_shape": (4,), "num_classes": 2}, "name must be one of"),
        (
            {
                "name": "mlp",
                "input_shape": (4,),
                "num_classes": 2,
                "activation": "gelu",
            },
            "activation must be one of",
        ),
        (
            {"name": "mlp", "input_shape": (4,), "num_classes": 1},
            "num_classes must be >= 2, got 1",
        ),
        (
            {"name": "mlp", "input_shape": (0,), "num_classes": 2},
            r"input_shape must be positive, got \(0,\)",
        ),
        (
            {"name": "mlp", "input_shape": (), "num_classes": 2},
            r"input_shape must be positive, got \(\)",
        ),
        (
            {"name": "cnn", "input_shape": (8, 8), "num_classes": 2},
            r"cnn needs input_shape \(channels, height, width\), got \(8, 8\)",
        ),
        (
            {
                "name": "cnn",
                "input_shape": (1, 8, 8),
                "num_classes": 2,
                "hidden": (16, 32),
            },
            r"cnn hidden must be \(conv1, conv2, fc\), got \(16, 32\)",
        ),
        (
            {"name": "gru", "input_shape": (1, 8, 8), "num_classes": 2},
            r"gru needs input_shape \(channels, steps\), got \(1, 8, 8\)",
        ),
        (
            {"name": "cnn1d", "input_shape": (2, 8), "num_classes": 2, "hidden": (4,)},
            r"cnn1d hidden must have 2 width\(s\), got \(4,\)",
        ),
    ],
)
def test_bad_spec_raises_model_error_naming_the_problem(kwargs, message):
    with pytest.raises(ModelError, match=message):
        ModelSpec(**kwargs)


def test_bad_spec_reports_every_problem():
    with pytest.raises(ModelError) as excinfo:
        ModelSpec(name="rnn", input_shape=(4,), num_classes=1, activation="gelu")

    text = str(excinfo.value)
    assert "name must be one of" in text
    assert "activation must be one of" in text
    assert "num_classes must be >= 2" in text


@pytest.mark.parametrize(
    "data",
    [
        {"input_shape": [4], "num_classes": 2},  # no name
        {"name": "mlp", "input_shape": ["four"], "num_classes": 2},
        {"name": "mlp", "input_shape": 4, "num_classes": 2},
    ],
)
def test_malformed_spec_dict_raises_model_error(data):
    with pytest.raises(ModelError, match="Model spec is incomplete or malformed"):
        ModelSpec.from_dict(data)


# ---------------------------------------------------------------- DP compatibility
@pytest.mark.parametrize(
    "spec",
    [
        default_spec("mlp", (30,), 2),
        default_spec("cnn", (1, 8, 8), 10),
        default_spec("cnn", (3, 10, 6), 4, activation="tanh"),
        default_spec("cnn1d", (6, 100), 4),
        default_spec("gru", (6, 100), 4),
    ],
)
def test_no_batchnorm_and_opacus_accepts_the_model(spec):
    model = build_model(spec, model_seed=0)

    assert not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
    )
    assert ModuleValidator.validate(model, strict=False) == []


def test_cnn_normalises_with_groupnorm():
    model = build_model(default_spec("cnn", (1, 8, 8), 10))

    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())


def test_validator_would_catch_batchnorm():
    # Control: the check above can fail.
    with_bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))

    assert ModuleValidator.validate(with_bn, strict=False) != []

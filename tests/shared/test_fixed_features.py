"""random-conv-linear: a fixed, data-independent extractor and a trainable head."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from fedge.client.dp_path import choose_dp_path
from fedge.client.dp_training import train_private
from fedge.client.training import train_plain
from fedge.edge_export.onnx_export import check_onnx, export_onnx
from fedge.shared import keys
from fedge.shared.errors import ModelError
from fedge.shared.models import ModelSpec, build_model, default_spec
from fedge.shared.trainable import freeze, select_trainable
from tests.client.dp_round import SPEND, one_dp_round, opacus_epsilon

SHAPES = [(1, 8, 8), (3, 20, 24), (6, 100), (1, 29)]


def _model(shape, seed=0, classes=4):
    return build_model(
        default_spec("random-conv-linear", shape, classes), model_seed=seed
    )


def _extractor(model):
    return {
        k: v.clone() for k, v in model.state_dict().items() if k.startswith("features.")
    }


@pytest.mark.parametrize("shape", SHAPES)
def test_the_extractor_is_the_same_whatever_data_it_sees(shape):
    first, second = _model(shape), _model(shape)
    gen = torch.Generator().manual_seed(1)
    probe = torch.randn(5, *shape, generator=gen)
    before = _extractor(first)

    # Each sees other data, in training mode, at other scales and offsets.
    for model, scale, offset in ((first, 1.0, 0.0), (second, 50.0, -3.0)):
        model.train()
        for _ in range(3):
            model(scale * torch.randn(16, *shape, generator=gen) + offset)

    assert list(_extractor(first)) and not list(first.buffers())
    for name, tensor in _extractor(first).items():
        assert torch.equal(tensor, before[name])
        assert torch.equal(tensor, _extractor(second)[name])
    with torch.no_grad():
        assert torch.equal(first.features(probe), second.features(probe))


def test_an_example_s_features_do_not_depend_on_the_others_in_its_batch():
    model = _model((1, 8, 8)).eval()
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        together = model(x)
        apart = torch.cat([model(x[i : i + 1]) for i in range(6)])
        shuffled = model(torch.cat([x[3:], 10 * x[:3]]))[:3]
    torch.testing.assert_close(together, apart, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(shuffled, together[3:], atol=1e-6, rtol=1e-5)


def test_the_head_sees_standardised_features_and_only_the_head_trains():
    model = _model((1, 8, 8), classes=10)
    seen = []
    model.head.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    model(7 * torch.randn(4, 1, 8, 8) + 2)

    # Zero mean and unit variance over each example's 1024 features.
    torch.testing.assert_close(seen[0].mean(dim=1), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        seen[0].norm(dim=1), torch.full((4,), 32.0), rtol=1e-4, atol=0
    )
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["head.weight", "head.bias"]
    # 64 filters x a 4 x 4 grid, to 10 classes.
    assert model.head.weight.shape == (10, 64 * 16)
    assert choose_dp_path(model, None).mode == "fast"


@pytest.mark.parametrize("shape", [(1, 8, 8), (6, 100)])
@pytest.mark.parametrize("dp", [True, False])
def test_no_extractor_parameter_moves_in_training(shape, dp):
    model = _model(shape)
    before = _extractor(model)
    head_before = model.head.weight.detach().clone()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, *shape)).astype(np.float32)
    y = rng.integers(0, 4, size=40)

    if dp:
        train_private(
            model,
            x,
            y,
            noise_multiplier=1.0,
            sample_rate=0.25,
            steps=8,
            learning_rate=0.5,
            momentum=0.9,
            max_grad_norm=1.0,
            seed=0,
        )
    else:
        train_plain(
            model, x, y, epochs=2, batch_size=8, learning_rate=0.5, momentum=0.9, seed=0
        )

    for name, tensor in model.state_dict().items():
        if name.startswith("features."):
            assert torch.equal(tensor, before[name])  # bit for bit
    assert not torch.equal(model.head.weight, head_before)


def test_the_privacy_spend_is_that_of_the_same_plan_with_another_model():
    fixed, _, n = one_dp_round("random-conv-linear")
    cnn, _, _ = one_dp_round("cnn")

    assert {k: fixed[k] for k in SPEND} == {k: cnn[k] for k in SPEND}
    assert fixed[keys.EPSILON] == cnn[keys.EPSILON]
    assert fixed[keys.SAMPLE_RATE] == pytest.approx(32 / n)
    assert fixed[keys.DP_ROUND_STEPS] == round(n / 32)
    assert fixed[keys.EPSILON] == pytest.approx(opacus_epsilon(fixed), rel=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_export_matches_pytorch(shape):
    model = _model(shape).eval()
    x = np.random.default_rng(0).normal(size=(7, *shape)).astype(np.float32) * 3

    proto = check_onnx(export_onnx(model, shape), input_shape=shape, num_classes=4)

    session = ort.InferenceSession(proto.SerializeToString())
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x})[0], expected, atol=1e-5)


def test_tables_are_refused_with_the_alternative():
    with pytest.raises(ModelError, match=r"random-conv-linear needs images .* use mlp"):
        ModelSpec(name="random-conv-linear", input_shape=(30,), num_classes=2)


def test_series_kernels_span_dilations_up_to_the_series_length():
    model = _model((2, 100))
    dilations = [conv.dilation[0] for conv in model.features.convs]
    # (100 - 1) // 8 = 12: dilations 1, 2, 4, 8; 256 kernels split evenly.
    assert dilations == [1, 2, 4, 8]
    assert [conv.out_channels for conv in model.features.convs] == [64] * 4
    assert model.head.weight.shape == (4, 2 * 256)


@pytest.mark.parametrize("trainable", ["*", "features.*,head.*", "head.weight"])
def test_trainable_never_turns_the_extractor_on(trainable):
    model = _model((1, 8, 8))

    selection = select_trainable(model, trainable)
    freeze(model, selection)

    assert all(name.startswith("head.") for name in selection.trainable)
    assert set(selection.frozen) >= {"features.conv.weight", "features.conv.bias"}
    assert not any(p.requires_grad for p in model.features.parameters())
    assert model.head.weight.requires_grad

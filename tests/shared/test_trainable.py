"""``trainable`` globs: which parameters train and travel, and the errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedge.shared.config import from_run_config, trainable_patterns
from fedge.shared.errors import ConfigError
from fedge.shared.models import build_model, default_spec
from fedge.shared.trainable import (
    freeze,
    select_trainable,
    trainable_size_bytes,
)


def cnn() -> nn.Module:
    return build_model(default_spec("cnn", (1, 8, 8), 10), model_seed=0)


def test_globs_pick_parameters_by_name():
    selection = select_trainable(cnn(), "classifier.3.*, features.0.bias")

    assert selection.trainable == (
        "features.0.bias",
        "classifier.3.weight",
        "classifier.3.bias",
    )
    assert "features.0.weight" in selection.frozen
    assert len(selection.trainable) + len(selection.frozen) == 10


def test_default_trains_every_parameter():
    config = from_run_config({}, fill_defaults=True)
    selection = select_trainable(cnn(), config.train.trainable)
    assert selection.frozen == ()
    assert len(selection.trainable) == 10


def test_a_parameter_under_two_names_follows_either():
    # Opacus's DPGRU exposes its cells' weights under nn.GRU's names too.
    model = build_model(default_spec("gru", (6, 20), 4), model_seed=0)

    selection = select_trainable(model, "rnn.l0.*")

    assert "rnn.weight_ih_l0" in selection.trainable  # alias of rnn.l0.ih.weight
    assert "rnn.l0.ih.weight" in selection.trainable
    assert selection.frozen == ("classifier.weight", "classifier.bias")


def test_freeze_turns_gradients_off_for_the_frozen_only():
    model = cnn()
    selection = select_trainable(model, "classifier.*")

    freeze(model, selection)

    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert flags == {n: n.startswith("classifier.") for n in flags}
    freeze(model, select_trainable(model, "*"))
    assert all(p.requires_grad for p in model.parameters())


def test_exchanged_arrays_are_the_state_without_the_frozen():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    selection = select_trainable(model, "1.*")

    # Buffers travel: training changes running statistics.
    assert selection.exchanged(model.state_dict().keys()) == [
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]


def test_trainable_size_counts_each_value_once():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 4))
    selection = select_trainable(model, "1.*")
    assert trainable_size_bytes(model, selection) == (2 * 4 + 4) * 4


def test_a_glob_matching_nothing_names_it_and_the_parameters():
    with pytest.raises(ConfigError) as raised:
        select_trainable(cnn(), "classifier.*,head.*,Features.*")

    message = str(raised.value)
    assert "'trainable' pattern(s) ['head.*', 'Features.*'] match no parameter" in (
        message
    )
    assert "classifier.3.bias" in message
    assert "its 10 parameter names are" in message
    assert "Nothing was started" in message


def test_a_long_parameter_list_is_shortened_in_the_error():
    model = nn.Sequential(*[nn.Linear(1, 1) for _ in range(15)])
    with pytest.raises(ConfigError, match=r"its 30 parameter names are: .*, \.\.\."):
        select_trainable(model, "head.*")


@pytest.mark.parametrize("value", ["", "a,,b", "classifier.*,", " , "])
def test_an_empty_glob_is_refused(value):
    assert trainable_patterns(value) == ()
    with pytest.raises(ConfigError, match=r"'trainable' must be comma-separated globs"):
        select_trainable(cnn(), value)
    with pytest.raises(
        ConfigError, match=r"Invalid run config: 'trainable' must be comma-separated"
    ):
        from_run_config({"trainable": value}, fill_defaults=True)


def test_globs_are_split_and_stripped():
    assert trainable_patterns("a.*, b.?") == ("a.*", "b.?")


def test_frozen_parameters_get_no_gradient_in_plain_training():
    from fedge.client.training import train_plain

    model = cnn()
    freeze(model, select_trainable(model, "classifier.3.*"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 8, 8, generator=generator).numpy()
    y = torch.randint(0, 10, (16,), generator=generator).numpy()

    train_plain(
        model,
        x,
        y,
        epochs=2,
        batch_size=4,
        learning_rate=0.5,
        momentum=0.9,
        seed=1,
        proximal_mu=0.1,
    )

    after = model.state_dict()
    for name in before:
        same = torch.equal(before[name], after[name])
        assert same == (not name.startswith("classifier.3.")), name


class _LSTMBackbone(nn.Module):
    """An LSTM (which DP-SGD cannot train as is) under a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 5, batch_first=True)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def test_a_frozen_layer_dp_sgd_cannot_train_does_not_stop_a_dp_run(monkeypatch):
    from fedge.shared import models
    from fedge.shared.errors import ModelError
    from fedge.shared.private_model import check_model_for_run

    monkeypatch.setattr(models, "build_model", lambda spec: _LSTMBackbone())
    spec = default_spec("mlp", (4,), 2)
    trained = from_run_config({"dp-mode": "sample"}, fill_defaults=True)
    head_only = from_run_config(
        {"dp-mode": "sample", "trainable": "head.*"}, fill_defaults=True
    )

    with pytest.raises(ModelError, match=r"rnn \(LSTM\)"):
        check_model_for_run(trained, spec)
    check_model_for_run(head_only, spec)  # the frozen LSTM gets no gradient

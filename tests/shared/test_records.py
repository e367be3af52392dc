from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from torch import nn

from fedge.shared.errors import ModelError
from fedge.shared.records import (
    load_record_into,
    record_list,
    record_scalar,
    record_to_state_dict,
    state_dict_to_record,
)


def mixed_state_dict():
    # Deliberately not alphabetical, to catch any re-sorting.
    return OrderedDict(
        [
            ("z.weight", torch.tensor([[1.5, -2.0, 3.25], [0.0, 1e-8, -7.0]])),
            ("a.counts", torch.tensor([3, -1, 2**40], dtype=torch.int64)),
            ("m.double", torch.tensor([0.1, 1 / 3], dtype=torch.float64)),
            ("b.half", torch.tensor([0.5, -0.25], dtype=torch.float16)),
            ("c.mask", torch.tensor([True, False, True])),
            ("d.small", torch.tensor([255, 0], dtype=torch.uint8)),
            ("e.scalar", torch.tensor(4.0)),
        ]
    )


def test_round_trip_preserves_names_order_values_and_dtypes():
    original = mixed_state_dict()

    restored = record_to_state_dict(state_dict_to_record(original))

    assert list(restored) == list(original)
    for name, tensor in original.items():
        assert restored[name].dtype == tensor.dtype, name
        assert restored[name].shape == tensor.shape, name
        assert torch.equal(restored[name], tensor), name


def test_record_holds_the_values_as_numpy_arrays():
    record = state_dict_to_record(OrderedDict(w=torch.tensor([[1.0, 2.0]])))

    np.testing.assert_array_equal(
        record["w"].numpy(), np.array([[1.0, 2.0]], dtype=np.float32)
    )


def test_record_is_a_copy_not_a_view_of_the_weights():
    weights = OrderedDict(w=torch.zeros(3, requires_grad=True))
    record = state_dict_to_record(weights)

    with torch.no_grad():
        weights["w"].add_(5.0)

    assert torch.equal(record_to_state_dict(record)["w"], torch.zeros(3))


def test_model_state_dict_round_trips_into_a_fresh_model():
    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    torch.manual_seed(1)
    target = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(5, 3)

    load_record_into(target, state_dict_to_record(source.state_dict()))

    assert torch.equal(target(x), source(x))


def test_load_record_into_refuses_a_wrong_shape_naming_key_and_shapes():
    model = nn.Linear(3, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrong = OrderedDict(weight=torch.zeros(2, 4), bias=torch.zeros(2))

    with pytest.raises(
        ModelError, match=r"'weight' has shape \(2, 4\), expected \(2, 3\)"
    ):
        load_record_into(model, state_dict_to_record(wrong))

    # Nothing was loaded.
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_load_record_into_refuses_missing_and_unexpected_names():
    model = nn.Linear(3, 2)
    record = ArrayRecord(OrderedDict(weight=torch.zeros(2, 3), extra=torch.zeros(1)))

    with pytest.raises(ModelError, match=r"missing \['bias'\], unexpected \['extra'\]"):
        load_record_into(model, record)


# ---------------------------------------------------------------- entries
def test_record_scalar_reads_one_value_of_either_record_kind():
    config = ConfigRecord({"server-round": 3, "spec": "{}"})
    metrics = MetricRecord({"train-loss": 0.25})

    assert record_scalar(config, "server-round") == 3
    assert record_scalar(config, "spec") == "{}"
    assert record_scalar(metrics, "train-loss") == 0.25


def test_record_scalar_refuses_a_list():
    with pytest.raises(
        ModelError, match=r"entry 'xs' holds a list, expected one value"
    ):
        record_scalar(ConfigRecord({"xs": [1, 2]}), "xs")


def test_record_list_reads_a_list_and_defaults_to_empty():
    record = ConfigRecord({"specs": ["a", "b"]})

    assert record_list(record, "specs") == ["a", "b"]
    assert record_list(record, "absent") == []


def test_record_list_refuses_a_single_value():
    with pytest.raises(ModelError, match=r"entry 'n' holds 3, expected a list"):
        record_list(ConfigRecord({"n": 3}), "n")

import io

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from fedge.server.update_validation import (
    array_values,
    is_refusal,
    metric_key_problems,
    validate_reply,
    validate_update,
)


def ref():
    return {
        "fc1.weight": np.zeros((64, 20), np.float32),
        "fc1.bias": np.zeros(64, np.float32),
    }


def rec(arrays):
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def content(arrays=None, **metrics):
    metrics.setdefault("num-examples", 10)
    rd = RecordDict({"metrics": MetricRecord(metrics)})
    if arrays is not None:
        rd["arrays"] = rec(arrays)
    return rd


# ------------------------------------------------------------ validate_update
@pytest.mark.parametrize("wrap", [dict, rec, "torch"])
def test_matching_update_passes_in_every_container(wrap):
    update = {k: v + 0.5 for k, v in ref().items()}
    if wrap == "torch":
        update = {k: torch.from_numpy(v) for k, v in update.items()}
    else:
        update = wrap(update)
    assert validate_update(rec(ref()), update) is None


def test_shape_mismatch_names_array_and_both_shapes():
    update = {**ref(), "fc1.weight": np.zeros((64, 10), np.float32)}
    assert (
        validate_update(ref(), update)
        == "'fc1.weight' has shape (64, 10), expected (64, 20)"
    )


def test_missing_and_unexpected_arrays():
    assert validate_update(ref(), {"fc1.weight": ref()["fc1.weight"]}) == (
        "missing arrays ['fc1.bias']"
    )
    extra = {**ref(), **{f"x{i}": np.zeros(1) for i in range(5)}}
    assert validate_update(ref(), extra) == (
        "unexpected arrays ['x0', 'x1', 'x2'] and 2 more"
    )


def test_dtype_mismatch():
    update = {**ref(), "fc1.bias": np.zeros(64, np.float64)}
    assert validate_update(ref(), update) == (
        "'fc1.bias' has dtype float64, expected float32"
    )


def test_non_finite_values_are_counted():
    bias = np.zeros(64, np.float32)
    bias[[1, 5]] = np.nan
    bias[9] = -np.inf
    assert validate_update(ref(), {**ref(), "fc1.bias": bias}) == (
        "'fc1.bias' has 2 NaN and 1 Inf values"
    )


def test_integer_arrays_need_no_finiteness_check():
    r = {"steps": np.array([3], np.int64)}
    assert validate_update(r, {"steps": np.array([4], np.int64)}) is None


def test_update_norm_bound():
    r = {"a": np.zeros(1, np.float32), "b": np.zeros(1, np.float32)}
    u = {"a": np.array([3.0], np.float32), "b": np.array([4.0], np.float32)}  # norm 5
    assert validate_update(r, u, max_update_norm=5.0) is None
    assert validate_update(r, u, max_update_norm=0.0) is None  # 0 = no bound
    assert validate_update(r, u, max_update_norm=4.9) == (
        "update has L2 norm 5 from the global model, above max-update-norm 4.9"
    )


# ------------------------------------------------------------- validate_reply
def test_good_train_and_eval_replies_pass():
    assert validate_reply(content(ref()), ref()) is None
    assert validate_reply(content(None, **{"eval-loss": 0.3}), None) is None


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (
            RecordDict({"arrays": rec(ref())}),
            "reply carries 0 MetricRecords, expected 1",
        ),
        (
            RecordDict(
                {
                    "arrays": rec(ref()),
                    "m1": MetricRecord({"num-examples": 1}),
                    "m2": MetricRecord({"num-examples": 1}),
                }
            ),
            "reply carries 2 MetricRecords, expected 1",
        ),
        (
            RecordDict({"arrays": rec(ref()), "metrics": MetricRecord({"x": 1.0})}),
            "metric 'num-examples' is missing",
        ),
        (
            content(ref(), **{"num-examples": 0}),
            "metric 'num-examples' must be a positive number, got 0",
        ),
        (
            content(ref(), **{"num-examples": float("nan")}),
            "metric 'num-examples' must be a positive number, got nan",
        ),
        (content(None), "reply carries ArrayRecords [], expected exactly ['arrays']"),
    ],
)
def test_malformed_replies(reply, problem):
    assert validate_reply(reply, ref()) == problem


def test_arrays_under_another_name_are_refused():
    reply = RecordDict(
        {"weights": rec(ref()), "metrics": MetricRecord({"num-examples": 3})}
    )
    assert validate_reply(reply, ref()) == (
        "reply carries ArrayRecords ['weights'], expected exactly ['arrays']"
    )


def test_reply_arrays_are_checked_against_reference():
    bad = {**ref(), "fc1.weight": np.zeros((64, 10), np.float32)}
    assert validate_reply(content(bad), ref()) == (
        "'fc1.weight' has shape (64, 10), expected (64, 20)"
    )


def test_refusal_is_recognised():
    assert is_refusal(content(None, refused=1))
    assert not is_refusal(content(None, refused=0))
    assert not is_refusal(content(ref()))


# -------------------------------------------------------- metric_key_problems
def test_odd_metric_names_are_reported_against_the_majority():
    replies = [
        content(None, loss=1.0),
        content(None, loss=1.0, extra=2.0),
        content(None, loss=2.0),
    ]
    assert metric_key_problems(replies) == [
        None,
        "metrics ['extra', 'loss', 'num-examples'] differ from the other replies' "
        "['loss', 'num-examples']",
        None,
    ]


def test_metric_name_tie_keeps_the_first_set():
    problems = metric_key_problems([content(None, a=1.0), content(None, b=1.0)])
    assert problems[0] is None and problems[1] is not None
    assert metric_key_problems([]) == []


@pytest.mark.parametrize(
    "values",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
        np.array(2.5, dtype=np.float16),  # 0-d
        np.zeros((0, 5), dtype=np.float32),  # empty
        np.array([1, -2, 3], dtype=">i8"),  # big-endian
        np.array([True, False]),
        np.arange(6, dtype=np.uint8).reshape(1, 2, 3),
    ],
    ids=["f32", "fortran", "0-d", "empty", "big-endian", "bool", "3-d"],
)
def test_array_values_equal_what_flower_loads(values):
    array = Array(values)

    got = array_values(array)

    expected = np.load(io.BytesIO(array.data), allow_pickle=False)
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_array_values_are_read_only_views_of_the_reply():
    got = array_values(Array(np.ones(4, np.float32)))

    with pytest.raises(ValueError, match="read-only"):
        got[0] = 2.0


def test_array_values_of_a_truncated_array_fail_as_flower_fails():
    array = Array(np.ones(100, np.float32))
    array.data = array.data[:-8]  # the header promises 400 bytes, 392 come

    with pytest.raises(ValueError):
        array.numpy()
    with pytest.raises(ValueError):
        array_values(array)


def test_array_values_of_bytes_that_are_no_npy_fail_as_flower_fails():
    array = Array(np.ones(3, np.float32))
    array.data = b"not an npy file at all"

    with pytest.raises(ValueError):
        array_values(array)


def test_a_non_finite_value_is_found_through_the_fast_path():
    update = rec({**ref(), "fc1.bias": np.r_[np.zeros(63), np.nan].astype(np.float32)})

    assert (
        validate_update(rec(ref()), update) == "'fc1.bias' has 1 NaN and 0 Inf values"
    )

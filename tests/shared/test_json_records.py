import json
import math

import numpy as np
import torch

from fedge.shared.json_records import json_safe, plain, read_jsonl


def test_json_safe_makes_strict_json_all_the_way_down():
    value = {
        "nan": math.nan,
        "inf": -math.inf,
        "np-float": np.float32(0.5),
        "np-int": np.int64(7),
        "torch": torch.tensor(2.5),
        3: ("a", [np.float64(math.nan), 1]),
    }

    safe = json_safe(value)

    assert safe == {
        "nan": None,
        "inf": None,
        "np-float": 0.5,
        "np-int": 7,
        "torch": 2.5,
        "3": ["a", [None, 1]],
    }
    assert type(safe["np-int"]) is int and type(safe["np-float"]) is float
    json.dumps(safe, allow_nan=False)  # would raise on NaN


def test_plain_leaves_strings_and_arrays_of_many_values_alone():
    array = np.array([1.0, 2.0])

    assert plain("text") == "text"
    assert plain(array) is array


def test_read_jsonl_skips_bad_lines_and_says_which(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"round": 0}\n[1, 2]\n{"round": 1}\n{"round": 2, "cl\n')
    bad = []

    records = read_jsonl(path, on_bad_line=lambda number, reason: bad.append(number))

    assert records == [{"round": 0}, {"round": 1}]
    assert bad == [4]  # the half-written last line; line 2 is JSON, not an object


def test_read_jsonl_of_a_missing_file_is_empty(tmp_path):
    assert read_jsonl(tmp_path / "absent.jsonl") == []

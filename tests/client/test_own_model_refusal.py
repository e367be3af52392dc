"""The ClientApp's model cache refuses the user's model when this node's copy
is not the code the coordinator identified, and caches nothing then."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedge.client import process_cache
from fedge.shared.errors import ModelError
from fedge.shared.models import default_spec

NET = """
from torch import nn
def Net(*, input_shape, num_classes):
    return nn.Linear(input_shape[0], num_classes)
"""


def test_a_differing_copy_is_refused_and_not_cached(tmp_path: Path) -> None:
    nets = tmp_path / "nets.py"
    nets.write_text(NET)
    spec_json = default_spec(f"{nets}:Net", (4,), 3).to_json()
    process_cache.clear()
    nets.write_text(NET + "# edited on the node\n")

    with pytest.raises(
        ModelError, match=r"model code here differs from the coordinator's"
    ):
        process_cache.model_for(spec_json)

    nets.write_text(NET)  # the coordinator's code again: now it builds
    assert process_cache.model_for(spec_json).out_features == 3
    process_cache.clear()

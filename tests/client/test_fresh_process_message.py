"""A deployed node's later messages, each in a fresh process, load no heavy library.

Flower runs every message of a SuperNode in a new ``flwr-clientapp`` process;
only ``context.state`` and the node's ``state-dir`` survive. After the first DP
message, the next one must train and account from those alone: no Opacus (plan,
ε schedule and model validation are in ``context.state``), no scikit-learn or
pandas (the node's arrays are cached in its ``state-dir``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.common import ConfigRecord, MessageType
from flwr.common.serde import context_to_proto
from flwr.supercore.task_identity import TaskIdentity
from opacus.accountants import RDPAccountant

from fedge.client import node_cache
from fedge.client.client_app import train
from fedge.server.reference_data import load_reference_data
from fedge.server.starting_model import model_spec_for
from fedge.shared import keys
from fedge.shared.config import from_run_config
from fedge.shared.models import build_model
from fedge.shared.records import state_dict_to_record

SECOND_MESSAGE = """
import json, sys
from pathlib import Path
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common import MessageType
from flwr.common.serde import context_from_proto
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.supercore.task_identity import TaskIdentity
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
from fedge.client.client_app import train
from fedge.shared.models import ModelSpec, build_model
from fedge.shared.records import state_dict_to_record
folder = Path(sys.argv[1])
setup = json.loads((folder / "setup.json").read_text())
context = context_from_proto(ProtoContext.FromString((folder / "context.bin").read_bytes()))
model = build_model(ModelSpec.from_json(setup["model-spec"]), model_seed=0)
content = RecordDict({"arrays": state_dict_to_record(model.state_dict()),
                      "config": ConfigRecord({**setup, "server-round": 2})})
reply = train(Message(content, dst_node_id=1, message_type=MessageType.TRAIN), context)
heavy = [m for m in ("opacus", "sklearn", "pandas", "scipy", "torch._dynamo")
         if m in sys.modules]
print(json.dumps({"heavy": heavy, **dict(reply.content["metrics"])}))
"""


@pytest.fixture
def task_identity(monkeypatch):
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def test_a_second_dp_message_in_a_fresh_process_needs_no_heavy_library(
    tmp_path: Path, task_identity
) -> None:
    run_config = from_run_config(
        {"dp-mode": "sample", "local-epochs": 1, "num-server-rounds": 3},
        fill_defaults=True,
    ).to_flat()
    config = from_run_config(run_config)
    reference = load_reference_data(config.data)
    spec = model_spec_for(config, reference.preprocessing)
    setup = {
        keys.MODEL_SPEC: spec.to_json(),
        keys.PREPROCESSING: reference.preprocessing.to_json(),
        keys.FEDGE_RUN_ID: "fresh",
    }
    node_config = {
        "partition-id": 0,
        "num-partitions": 5,
        "state-dir": str(tmp_path / "state"),
    }
    context = Context(
        run_id=1,
        node_id=1,
        node_config=node_config,
        state=RecordDict(),
        run_config=run_config,
    )
    node_cache.clear_memory()  # so the first message writes the state-dir cache
    model = build_model(spec, model_seed=0)
    content = RecordDict(
        {
            keys.ARRAYS: state_dict_to_record(model.state_dict()),
            keys.CONFIG: ConfigRecord({**setup, keys.SERVER_ROUND: 1}),
        }
    )
    first = train(
        Message(content, dst_node_id=1, message_type=MessageType.TRAIN), context
    )
    (tmp_path / "setup.json").write_text(json.dumps(setup))
    (tmp_path / "context.bin").write_bytes(
        context_to_proto(context).SerializeToString()
    )

    out = subprocess.run(
        [sys.executable, "-c", SECOND_MESSAGE, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    second = json.loads(out.strip().splitlines()[-1])

    assert second["heavy"] == []
    assert second[keys.REFUSED] == 0
    assert second[keys.DP_STEPS] == 2 * first.content[keys.METRICS][keys.DP_STEPS]
    assert second[keys.EPSILON] > first.content[keys.METRICS][keys.EPSILON] > 0
    # The ε the fresh process reported from its schedule is Opacus's own.
    reference = RDPAccountant()
    reference.history = [
        (second[keys.NOISE_MULTIPLIER], second[keys.SAMPLE_RATE], second[keys.DP_STEPS])
    ]
    assert second[keys.EPSILON] == pytest.approx(
        reference.get_epsilon(delta=second[keys.DELTA]), rel=1e-9
    )

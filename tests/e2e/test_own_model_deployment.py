"""A user's own model on real SuperNodes (TLS, node authentication, DP-SGD),
started from pretrained weights with part of it frozen.

One deployment, one run of two rounds: the node holding the coordinator's
copy of the model trains; a node whose copy differs and a node without it
refuse with one clear error, train nothing and spend no budget. The training
node gets the frozen arrays with its first message only: a deployed node runs
each message in a fresh ClientApp process, so they must survive in its
``context.state`` from one process to the next.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord

import fedge
from fedge.shared.run_folder import (
    BYTES_RECEIVED,
    BYTES_SENT,
    PROVENANCE_FROZEN,
    PROVENANCE_INITIAL_WEIGHTS,
    PROVENANCE_INITIAL_WEIGHTS_SHA256,
)
from tests.e2e.deployment import (
    DP_ROUND_CONFIG,
    Node,
    ledger_rounds,
    metrics_records,
    read_json,
    secure_federation,
    submit_run,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "own_nets.py"
MODULE = "e2e_own_nets"  # installed per party below; not inside the app bundle
REFERENCE = f"{MODULE}:ResidualMLP"
ROUNDS = 2  # round 2 is a fresh ClientApp process reading round 1's context.state
# The input projection trains; the residual blocks and the head stay as
# pretrained. (A part made of large arrays: each array pays a fixed ~140-byte
# header on the wire, README "Pretrained weights and a frozen backbone".)
TRAINABLE = "stem.*"
DIGITS_SHAPE, DIGITS_CLASSES = (64,), 10  # the built-in data every node holds


@dataclass(frozen=True)
class Deployment:
    """What the one run left behind: its folder, output, nodes and inputs."""

    run_dir: Path
    log: str
    nodes: list[Node]
    coordinator_source: Path
    differing_source: Path
    weights: Path
    initial: dict[str, torch.Tensor]


def _install(folder: Path, source: str) -> Path:
    """The model module as one party has it: a folder on that party's PYTHONPATH."""
    folder.mkdir()
    (folder / f"{MODULE}.py").write_text(source)
    return folder


def _python_path(monkeypatch: pytest.MonkeyPatch, base: str, *folders: Path) -> None:
    """Processes started from here on see ``folders`` first (a party's install)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([*map(str, folders), base]))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pretrained(path: Path) -> dict[str, torch.Tensor]:
    """'Pretrained' weights: the fixture's model, seeded as no run seeds it."""
    spec = importlib.util.spec_from_file_location("own_nets_reference", FIXTURE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(4321)
    model = module.ResidualMLP(input_shape=DIGITS_SHAPE, num_classes=DIGITS_CLASSES)
    torch.save(model.state_dict(), path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _wire_bytes(state: dict[str, torch.Tensor], names: list[str]) -> int:
    """Flower's own count of a message carrying these arrays."""
    return int(ArrayRecord({n: state[n] for n in names}).count_bytes())


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp_path = tmp_path_factory.mktemp("own-model")
    base = os.environ.get("PYTHONPATH", "")
    source = FIXTURE.read_text()
    coordinator = _install(tmp_path / "coordinator-site", source)
    same = _install(tmp_path / "node0-site", source)
    differs = _install(tmp_path / "node1-site", source + "\n# a node's own edit\n")
    weights = tmp_path / "pretrained.pt"
    initial = _pretrained(weights)
    overrides = {
        **DP_ROUND_CONFIG,
        "model": REFERENCE,
        "initial-weights": str(weights),
        "trainable": TRAINABLE,
        "num-server-rounds": ROUNDS,
        "min-nodes": 3,
        "fairness-report": False,
        "output-dir": str(tmp_path / "runs"),
        "run-name": "own-model",
        "node-wait-timeout-s": 90.0,
        "round-timeout-s": 180.0,
    }
    with pytest.MonkeyPatch.context() as monkeypatch:
        # The SuperLink starts the ServerApp: it sees the coordinator's install.
        _python_path(monkeypatch, base, coordinator)
        with secure_federation(tmp_path, 3) as federation:
            run_dir = federation.run_dir(overrides)
            for node, site in zip(federation.nodes, (same, differs, None), strict=True):
                _python_path(monkeypatch, base, *([site] if site else []))
                federation.start(node)
            _python_path(monkeypatch, base, coordinator)
            done = submit_run(federation.link, tmp_path, overrides, timeout_s=600)
            nodes = federation.nodes
    log = done.stdout + done.stderr
    assert read_json(run_dir / "status.json")["state"] == "complete", log[-3000:]
    yield Deployment(
        run_dir=run_dir,
        log=log,
        nodes=nodes,
        coordinator_source=coordinator / f"{MODULE}.py",
        differing_source=differs / f"{MODULE}.py",
        weights=weights,
        initial=initial,
    )


def test_nodes_whose_model_code_differs_or_is_missing_refuse_and_train_nothing(
    deployment: Deployment,
) -> None:
    run_dir, nodes = deployment.run_dir, deployment.nodes

    spec = read_json(run_dir / "model.json")["spec"]
    assert spec["identity"] == {
        "reference": REFERENCE,
        "sha256": _sha256(deployment.coordinator_source),
        "package": "",
        "version": "",
    }
    # Only the node with the coordinator's code trained and spent budget.
    records = [r for r in metrics_records(run_dir) if r["round"] >= 1]
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1))
    for record in records:
        assert [c["node-id"] for c in record["clients"]] == [nodes[0].node_id]
        assert (record["aggregated"], record["failures"]) == (1, 2)
    assert ledger_rounds(nodes[0]) == list(range(1, ROUNDS + 1))
    assert ledger_rounds(nodes[1]) == [] and ledger_rounds(nodes[2]) == []
    # The coordinator logged each refusal: one line naming both identities.
    sent = f"{REFERENCE} (sha256 {_sha256(deployment.coordinator_source)})"
    other = f"{REFERENCE} (sha256 {_sha256(deployment.differing_source)})"
    refusals = [
        line
        for line in deployment.log.splitlines()
        if "Received error in reply" in line
    ]
    assert any(
        f"node {nodes[1].node_id}:" in line
        and f"the coordinator sent {sent}, this machine has {other}" in line
        for line in refusals
    ), json.dumps(refusals)
    assert any(
        f"node {nodes[2].node_id}:" in line
        and f"module '{MODULE}' cannot be imported" in line
        for line in refusals
    ), json.dumps(refusals)


def test_frozen_arrays_stay_pretrained_and_reach_the_node_once(
    deployment: Deployment,
) -> None:
    run_dir, initial = deployment.run_dir, deployment.initial
    trainable = ["stem.1.weight", "stem.1.bias"]
    frozen = [n for n in initial if n not in trainable]

    # The final model: frozen arrays bit for bit the weights file's, the rest trained.
    final = torch.load(run_dir / "model.pt", weights_only=True)
    assert list(final) == list(initial)
    for name in frozen:
        assert torch.equal(final[name], initial[name]), name
    for name in trainable:
        assert not torch.equal(final[name], initial[name]), name
    # The provenance names the weights file by its SHA-256.
    provenance = read_json(run_dir / "model.json")["provenance"]
    assert provenance[PROVENANCE_INITIAL_WEIGHTS] == str(deployment.weights)
    assert provenance[PROVENANCE_INITIAL_WEIGHTS_SHA256] == _sha256(deployment.weights)
    assert provenance[PROVENANCE_FROZEN] == frozen
    # Bytes, as Flower counts each message's arrays. Round 1: every array to
    # each of the 3 nodes. Later rounds: node 0, which answered, keeps the frozen
    # arrays in its node state and is sent the trainable ones alone; the two
    # refusing nodes never answered, so they are sent every array again.
    full = _wire_bytes(initial, list(initial))
    part = _wire_bytes(initial, trainable)
    rows = {r["round"]: r for r in metrics_records(run_dir)}
    assert rows[1][BYTES_SENT] == 3 * full
    for server_round in range(2, ROUNDS + 1):
        assert rows[server_round][BYTES_SENT] == part + 2 * full, server_round
    for server_round in range(1, ROUNDS + 1):  # node 0's reply: trainable only
        assert rows[server_round][BYTES_RECEIVED] == part, server_round
    # The figure for the training node after its first round.
    trainable_bytes = sum(
        initial[n].numel() * initial[n].element_size() for n in trainable
    )
    assert part / trainable_bytes <= 1.05
    assert full / trainable_bytes > 2


def test_run_reads_the_deployed_folder_as_a_simulated_one(
    deployment: Deployment,
) -> None:
    run = fedge.Run(deployment.run_dir)
    trained = str(deployment.nodes[0].node_id)
    records = [r for r in metrics_records(deployment.run_dir) if r["round"] >= 1]

    assert run.status == "complete"
    assert run.config["model"] == REFERENCE
    assert run.metrics["round"].tolist() == list(range(ROUNDS + 1))
    assert run.clients["node-id"].astype(str).tolist() == [trained] * ROUNDS
    # Each node's ε: the latest the training node reported; the others spent none.
    assert run.epsilon_per_node == {trained: records[-1]["clients"][0]["epsilon"]}
    assert run.metrics["epsilon-max"].iloc[-1] == pytest.approx(
        records[-1]["epsilon-max"]
    )

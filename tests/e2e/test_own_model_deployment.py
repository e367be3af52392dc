"""A user's own model on real SuperNodes (TLS, node authentication, DP-SGD):
the node holding the coordinator's copy trains; a node whose copy differs and a
node without it refuse with one clear error, train nothing and spend no budget."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.e2e.deployment import (
    DP_ROUND_CONFIG,
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


def test_nodes_whose_model_code_differs_or_is_missing_refuse_and_train_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = os.environ.get("PYTHONPATH", "")
    source = FIXTURE.read_text()
    coordinator = _install(tmp_path / "coordinator-site", source)
    same = _install(tmp_path / "node0-site", source)
    differs = _install(tmp_path / "node1-site", source + "\n# a node's own edit\n")
    overrides = {
        **DP_ROUND_CONFIG,
        "model": REFERENCE,
        "num-server-rounds": 1,
        "min-nodes": 3,
        "fairness-report": False,
        "output-dir": str(tmp_path / "runs"),
        "run-name": "own-model",
        "node-wait-timeout-s": 90.0,
        "round-timeout-s": 180.0,
    }
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
    spec = read_json(run_dir / "model.json")["spec"]
    assert spec["identity"] == {
        "reference": REFERENCE,
        "sha256": _sha256(coordinator / f"{MODULE}.py"),
        "package": "",
        "version": "",
    }
    # Only the node with the coordinator's code trained and spent budget.
    (round1,) = [r for r in metrics_records(run_dir) if r["round"] == 1]
    assert [c["node-id"] for c in round1["clients"]] == [nodes[0].node_id]
    assert (round1["aggregated"], round1["failures"]) == (1, 2)
    assert ledger_rounds(nodes[0]) == [1]
    assert ledger_rounds(nodes[1]) == [] and ledger_rounds(nodes[2]) == []
    # The coordinator logged each refusal: one line naming both identities.
    sent = f"{REFERENCE} (sha256 {_sha256(coordinator / f'{MODULE}.py')})"
    other = f"{REFERENCE} (sha256 {_sha256(differs / f'{MODULE}.py')})"
    refusals = [line for line in log.splitlines() if "Received error in reply" in line]
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

"""The examples of docs/own-model.md end to end, as a user runs them, small and fast.

``examples/pretrain_public.py`` (1 epoch) -> ``fedge simulate --model
examples/nets.py:Net`` from ``backbone.pt`` with only ``head.*`` trainable,
DP-SGD, the clients' digits as a CSV, export and signing (2 clients x 1
round) -> ``fedge verify`` with the public key -> ``fedge predict`` on the
torch-free runtime. The frozen backbone must come out bit for bit as
pretrained, and the run folder must hold the signed manifest.

Every command runs in a user's project folder holding their own ``client.py``,
``server.py``, ``shared.py``... (each exits the interpreter if imported):
``fedge simulate`` started there must train every virtual client (the old
failure: Ray workers imported the user's ``client.py``, every client failed, and
the run still ended "complete" with the untrained model). A script in such a
folder calling ``fedge.simulate`` is ``examples/own_model.py``'s test
(``tests/examples/test_examples.py``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import fedge
from tests.fixtures.user_files import user_folder

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
FEDGE = [sys.executable, "-m", "fedge.cli.app"]  # `fedge`, from this checkout


def run(command: list[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    assert "user file" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done


def test_pretrain_finetune_with_dp_export_verify_predict(tmp_path: Path) -> None:
    # Prepare: public pretraining, the clients' CSV, the coordinator's key.
    folder = user_folder(tmp_path)  # every command's working directory
    out = tmp_path / "out"
    run(
        [
            sys.executable,
            EXAMPLES / "pretrain_public.py",
            "--out",
            out,
            "--epochs",
            "1",
        ],
        folder,
    )
    backbone = torch.load(out / "backbone.pt")
    run([*FEDGE, "keygen", folder / "coordinator.pem"], folder)

    # Execute: the command, on 2 clients for 1 round, exported and signed.
    run(
        [
            *FEDGE, "simulate",
            "--model", EXAMPLES / "nets.py:Net",
            "--set", f"initial-weights={out / 'backbone.pt'}",
            "--set", 'trainable="head.*"',
            "--data", out / "digits-clients.csv",
            "--label-column", "y",
            "--dp-mode", "sample",
            "--clients", "2", "--rounds", "1",
            "--set", "local-epochs=1",
            "--set", "export-onnx=true",
            # Relative, as a user types it: the ServerApp runs elsewhere.
            "--set", "sign-key=coordinator.pem",
            "--output-dir", tmp_path / "runs", "--run-name", "chain",
        ],
        folder,
    )  # fmt: skip
    run_dir = tmp_path / "runs" / "chain"
    verified = run(
        [
            *FEDGE, "verify", run_dir,
            "--public-key", folder / "coordinator.pem.pub", "--format", "json",
        ],
        folder,
    )  # fmt: skip
    predicted = run(
        [
            *FEDGE, "predict", run_dir / "model.onnx", out / "digits-clients.csv",
            "--public-key", folder / "coordinator.pem.pub",
            "-o", tmp_path / "predictions.csv",
        ],
        folder,
    )  # fmt: skip

    # Assert: every client trained, beside the user's own files ...
    finished = fedge.Run(run_dir)
    assert finished.status == "complete"
    assert finished.metrics.loc[1, "replies"] == 2
    assert finished.metrics.loc[1, "failures"] == 0
    # ... the backbone is the pretrained one, bit for bit; the head trained.
    final = torch.load(run_dir / "model.pt")
    assert set(final) == set(backbone)
    for name, tensor in backbone.items():
        if name.startswith("backbone."):
            assert torch.equal(final[name], tensor), name
    assert not torch.equal(final["head.weight"], backbone["head.weight"])
    card = json.loads((run_dir / "model.json").read_text())
    weights_sha256 = hashlib.sha256((out / "backbone.pt").read_bytes()).hexdigest()
    assert weights_sha256 in json.dumps(card["provenance"])
    assert 0 < card["privacy"]["epsilon-max"] <= 8.0
    # The signed manifest, checked against the coordinator's public key.
    assert (run_dir / "manifest.json").is_file()
    assert (run_dir / "manifest.sig").is_file()
    assert json.loads(verified.stdout)["signature"] == "verified"
    # One prediction per client row, a probability per digit summing to 1.
    rows = pd.read_csv(out / "digits-clients.csv")
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert len(predictions) == len(rows), predicted.stderr
    probabilities = predictions.drop(columns=predictions.columns[0])
    assert probabilities.shape[1] == 10
    assert probabilities.sum(axis=1).round(4).eq(1).all()

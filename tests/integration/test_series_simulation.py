"""The time-series models on Flower's simulation engine, as a user runs them.

`fedge simulate --dataset basic-motions` with each new model (2 clients, 2
rounds, no DP, so that a gain in accuracy is learning and not noise), and for
the default model (``auto``, the 1-D CNN) the issue's path on from there:
`fedge export`, `fedge verify`, and a torch-free `fedge predict --window` on
every artefact. One run per model: each costs ~20 s of engine start-up alone.
The same path with ``--dp-mode sample`` differs only in the ClientApp's
training, which ``tests/client/test_series_round.py`` runs for both models.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedge.cli.app import main as cli_main
from fedge.shared.datasets import load_builtin
from fedge.shared.models import ModelSpec, build_model
from fedge.shared.preprocessing import Preprocessing

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHANCE = 0.25  # basic-motions: 4 activities, 10 test recordings each
# Block torch, then run `fedge` as a device would: any import of torch fails.
TORCH_FREE_FEDGE = (
    "import sys; sys.modules['torch'] = None\n"
    "from fedge.cli.app import main\n"
    "for argv in sys.argv[1:]:\n"
    "    code = main(argv.split('|'))\n"
    "    assert code == 0, (argv, code)\n"
)


def simulate_basic_motions(tmp_path: Path, *flags: str) -> Path:
    code = cli_main(
        [
            "simulate",
            "--dataset",
            "basic-motions",
            "--clients",
            "2",
            "--rounds",
            "2",
            "--set",
            "batch-size=8",
            *flags,
            "--output-dir",
            str(tmp_path / "runs"),
            "--run-name",
            "series",
        ]
    )
    assert code == 0
    return tmp_path / "runs" / "series"


def assert_trained_and_learned(run_dir: Path, model_name: str) -> Preprocessing:
    """Every weight moved from the initial model, and the model learned."""
    meta = json.loads((run_dir / "model.json").read_text())
    spec = ModelSpec.from_dict(meta["spec"])
    assert (spec.name, spec.input_shape) == (model_name, (6, 100))
    # The server's initial model: the registry's, seeded with model-seed = 0.
    initial = build_model(spec, model_seed=0).state_dict()
    final = torch.load(run_dir / "model.pt")
    assert final.keys() == initial.keys()
    unchanged = [k for k in initial if torch.equal(final[k], initial[k])]
    assert unchanged == []

    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert list(metrics["round"]) == [0, 1, 2]
    assert list(metrics["replies"].iloc[1:]) == [2, 2]
    # Without DP nothing but training moves these: the clients' own training
    # loss falls from round 1 to round 2, and on the held-out test split the
    # model ends far above chance (20 of 40 right by chance: p < 0.001).
    train_loss = metrics["train-loss"].iloc[1:].tolist()
    assert train_loss[1] < train_loss[0]
    assert metrics["central-loss"].is_monotonic_decreasing
    assert metrics["central-accuracy"].iloc[0] <= CHANCE + 0.05
    assert metrics["central-accuracy"].iloc[-1] >= 2 * CHANCE
    return Preprocessing.from_dict(meta["preprocessing"])


def test_gru_trains_and_learns_on_the_simulation_engine(tmp_path: Path) -> None:
    run_dir = simulate_basic_motions(tmp_path, "--set", "model=gru")

    assert_trained_and_learned(run_dir, "gru")


def test_cnn1d_learns_then_exports_and_predicts_windows_without_torch(
    tmp_path: Path,
) -> None:
    run_dir = simulate_basic_motions(tmp_path)  # model = "auto": the 1-D CNN

    preprocessing = assert_trained_and_learned(run_dir, "cnn1d")

    # `fedge export` writes and checks every artefact; `fedge verify` re-hashes.
    assert cli_main(["export", str(run_dir)]) == 0
    assert cli_main(["verify", str(run_dir)]) == 0
    listed = set(json.loads((run_dir / "manifest.json").read_text())["artefacts"])
    artefacts = ["model.onnx", "model.int8.onnx", "model.ort", "model.fixed.onnx"]
    assert {*artefacts, "required_operators.config"} <= listed
    if "model.optimized.onnx" in listed:  # written only when it is faster
        artefacts.append("model.optimized.onnx")

    # One recording of four test recordings back to back, in raw units (the
    # device standardises with the model's metadata): 100-step windows at
    # stride 100 are exactly those four recordings.
    test = load_builtin("basic-motions", "test")
    means = np.asarray(preprocessing.channel_means)[:, None]
    scales = np.asarray(preprocessing.channel_scales)[:, None]
    raw = np.concatenate([x * scales + means for x in test.x[:4]], axis=1)
    np.savez(tmp_path / "recording.npz", x=raw)
    commands = [
        f"predict|--window|100|--stride|100|{run_dir / name}|"
        f"{tmp_path / 'recording.npz'}|-o|{tmp_path / (name + '.csv')}"
        for name in artefacts
    ]
    done = subprocess.run(
        [sys.executable, "-c", TORCH_FREE_FEDGE, *commands],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]

    # The reference: the trained PyTorch model on the same four recordings.
    spec = json.loads((run_dir / "model.json").read_text())["spec"]
    model = build_model(ModelSpec.from_dict(spec))
    model.load_state_dict(torch.load(run_dir / "model.pt"))
    with torch.no_grad():
        eager = model(torch.from_numpy(test.x[:4])).argmax(dim=1).tolist()
    expected = [preprocessing.class_names[k] for k in eager]
    for name in artefacts:
        with open(tmp_path / (name + ".csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        assert [r["start"] for r in rows] == ["0", "100", "200", "300"], name
        assert [r["label"] for r in rows] == expected, name

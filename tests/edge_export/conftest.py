"""Run-folder fixtures: tiny models trained briefly here, written as the server does.

Each is built and exported once per session (export takes seconds); tests that
modify a run folder work on a copy (``copy_run``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from fedge.reports.model_card import export_run_with_card
from fedge.shared.config import from_run_config
from fedge.shared.datasets import Dataset, fit_file, load_builtin, load_file
from fedge.shared.models import build_model, default_spec
from fedge.shared.run_folder import (
    ModelInfo,
    PrivacySummary,
    save_run_config,
    write_model_info,
)

REPO = Path(__file__).resolve().parents[2]


def train(
    model: nn.Module, data: Dataset, *, steps: int, lr: float, seed: int = 0
) -> None:
    """Plain minibatch SGD, enough for meaningful accuracy in about a second."""
    # One thread: on a shared 2-core machine, two threads fighting for a core
    # make these tiny steps several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _sgd(model, data, steps=steps, lr=lr, seed=seed)
    finally:
        torch.set_num_threads(threads)
    model.eval()


def _sgd(model: nn.Module, data: Dataset, *, steps: int, lr: float, seed: int) -> None:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    model.train()
    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(y), 32))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()


PRIVACY = PrivacySummary(
    dp_mode="sample",
    epsilon_max=3.25,
    delta=1e-5,
    noise_multiplier=1.1,
    max_grad_norm=1.0,
)


def write_run(
    run_dir: Path,
    model: nn.Module,
    spec,
    data: Dataset,
    overrides: dict,
    *,
    legacy: bool = False,
) -> Path:
    """Write model.pt, model.json and config.json as the server does.

    ``legacy=True`` writes them as fedge did before the run folder's contract
    was unified (nested ``config``, ε named ``max-epsilon``): folders on disk
    from then must still export and verify.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), run_dir / "model.pt")
    config = from_run_config(overrides, fill_defaults=True)
    model_info = ModelInfo(
        spec=spec,
        preprocessing=data.preprocessing,
        provenance={
            "rounds": 3,
            "strategy": config.strategy.name,
            "num-clients": 2,
            "dataset": config.data.dataset,
            "dataset-fingerprint": data.fingerprint(),
        },
        privacy=PRIVACY,
        metrics={"accuracy": 0.9},
    )
    if not legacy:
        save_run_config(run_dir, config)
        write_model_info(run_dir, model_info)
        return run_dir
    versions = {"fedge": "0.1.0", "flwr": "1.42.0", "torch": torch.__version__}
    meta = model_info.to_dict()
    meta["provenance"]["versions"] = versions
    meta["privacy"] = {
        "dp-mode": "sample",
        "max-epsilon": 3.25,
        "delta": 1e-5,
        "noise-multiplier": 1.1,
        "max-grad-norm": 1.0,
    }
    (run_dir / "model.json").write_text(json.dumps(meta))
    nested = {
        section: dataclasses.asdict(getattr(config, section))
        for section in ("data", "train", "dp", "strategy", "run")
    }
    (run_dir / "config.json").write_text(
        json.dumps({"config": nested, "versions": versions})
    )
    return run_dir


def make_tabular_frame(n: int, seed: int) -> pd.DataFrame:
    """Two numeric columns and one categorical, with a learnable label."""
    rng = np.random.default_rng(seed)
    age = rng.normal(40, 12, n).round(1)
    income = rng.normal(50_000, 15_000, n).round(0)
    colour = rng.choice(["red", "green", "blue"], n)
    score = (age - 40) / 12 + (income - 50_000) / 15_000 + (colour == "red") * 1.5
    label = np.where(score > 0.5, "yes", "no")
    return pd.DataFrame(
        {"age": age, "colour": colour, "income": income, "label": label}
    )


def exported_builtin_run(
    run_dir: Path, dataset: str, model_name: str, *, steps: int
) -> Path:
    """Train ``model_name`` on a built-in set briefly, write its run folder, export."""
    data = load_builtin(dataset, "train")
    prep = data.preprocessing
    spec = default_spec(model_name, prep.input_shape, prep.num_classes)
    model = build_model(spec, model_seed=0)
    train(model, data, steps=steps, lr=0.05)
    overrides = {"dataset": dataset, "model": model_name}
    export_run_with_card(write_run(run_dir, model, spec, data, overrides))
    return run_dir


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """A CNN trained on digits for 300 steps, exported (auto quantisation)."""
    root = tmp_path_factory.mktemp("runs")
    return exported_builtin_run(root / "digits", "digits", "cnn", steps=300)


@pytest.fixture(scope="session")
def tabular_run(tmp_path_factory) -> Path:
    """An MLP on a CSV 'file' dataset with a categorical column, exported.

    Written in the legacy format (see :func:`write_run`), so every test on it
    also shows that folders from before the contract still export.
    """
    root = tmp_path_factory.mktemp("tabular")
    eval_path, train_path = root / "eval.csv", root / "train.csv"
    make_tabular_frame(300, seed=1).to_csv(eval_path, index=False)
    make_tabular_frame(600, seed=2).to_csv(train_path, index=False)
    prep = fit_file(eval_path, label_column="label").preprocessing
    data = load_file(train_path, prep)
    spec = default_spec("mlp", prep.input_shape, prep.num_classes)
    model = build_model(spec, model_seed=0)
    train(model, data, steps=300, lr=0.05)
    run_dir = write_run(
        root / "run",
        model,
        spec,
        data,
        {"dataset": "file", "eval-data-path": str(eval_path), "model": "mlp"},
        legacy=True,
    )
    export_run_with_card(run_dir)
    return run_dir


@pytest.fixture
def copy_run(tmp_path):
    """Copy a session run folder so a test may change it."""

    def copy(run_dir: Path) -> Path:
        return Path(shutil.copytree(run_dir, tmp_path / run_dir.name))

    return copy


@pytest.fixture(scope="session")
def series_run(tmp_path_factory) -> Path:
    """A GRU (Opacus's DPGRU) trained briefly on basic-motions, exported.

    The GRU, not the 1-D CNN: its export swaps in nn.GRU, the path most likely
    to break, and every embedded artefact is built from it.
    """
    root = tmp_path_factory.mktemp("series")
    return exported_builtin_run(
        root / "basic-motions", "basic-motions", "gru", steps=60
    )


@pytest.fixture
def predict_in_fresh_process():
    """Run ``fedge predict ARGV`` in a new interpreter; return whether torch loaded.

    A fresh process, because this one has torch loaded already: the device
    path (the predict command and the runtime) must never import it.
    """

    def run(argv: list[str]) -> bool:
        script = (
            "import sys, argparse; from fedge.cli import predict as cli_predict\n"
            "p = argparse.ArgumentParser(); cli_predict.add_parser(p.add_subparsers())\n"
            "a = p.parse_args(['predict', *sys.argv[1:]])\n"
            "assert a.run(a) == 0\n"
            "print('torch' in sys.modules)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script, *map(str, argv)],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        )
        return done.stdout.strip() == "True"

    return run

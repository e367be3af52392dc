"""``fedge simulate`` refuses a bad starting point in one line, before anything runs.

A guard (``no_flower``) makes starting a SuperLink or any subprocess fail the
test; an existing run folder must be left exactly as it was.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from fedge.cli.app import main
from fedge.shared.models import build_model, default_spec


@pytest.fixture
def earlier_run(tmp_path: Path) -> Path:
    """A run folder that already holds a file: nothing may be written into it."""
    run_dir = tmp_path / "runs" / "earlier"
    run_dir.mkdir(parents=True)
    (run_dir / "status.json").write_text('{"state": "complete"}')
    return run_dir


def simulate(tmp_path: Path, *settings: str) -> int:
    return main(
        [
            "simulate",
            "--output-dir",
            str(tmp_path / "runs"),
            "--run-name",
            "earlier",
            "--set",
            "model=mlp",
            *[arg for s in settings for arg in ("--set", s)],
        ]
    )


def mlp_weights(tmp_path: Path, **changes: torch.Tensor | None) -> Path:
    state = build_model(default_spec("mlp", (64,), 10), model_seed=1).state_dict()
    for name, value in changes.items():
        if value is None:
            state.pop(name)
        else:
            state[name] = value
    path = tmp_path / "backbone.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            ("initial-weights=missing.pt",),
            r"initial-weights .*missing\.pt not found on the coordinator",
        ),
        (
            ("initial-weights=corrupt.pt",),
            r"initial-weights .*corrupt\.pt cannot be read as PyTorch weights",
        ),
        (
            ("initial-weights=backbone.pt",),
            r"2 mismatch\(es\): missing 'net\.5\.bias' \(expected shape \(10,\)\); "
            r"wrong shape 'net\.1\.weight': expected \(128, 64\), got \(128, 32\)",
        ),
        (
            ('trainable="head.*,net.5.*"',),
            r"'trainable' pattern\(s\) \['head\.\*'\] match no parameter of the model",
        ),
    ],
)
def test_a_bad_start_is_one_line_exit_2_and_writes_nothing(
    tmp_path, monkeypatch, capsys, no_flower, earlier_run, settings, message
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corrupt.pt").write_bytes(b"\x00" * 64)
    mlp_weights(tmp_path, **{"net.5.bias": None, "net.1.weight": torch.zeros(128, 32)})
    before = sorted(p.name for p in earlier_run.iterdir())

    code = simulate(tmp_path, *settings)

    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert re.search(message, err), err
    assert sorted(p.name for p in earlier_run.iterdir()) == before

"""The end of a run does what the run asked for, and says complete last.

``export-onnx = false``: no ONNX export, int8, latency timing or verification
(every one of them needs ``torch.onnx.export`` or an ONNX Runtime session).
The same run with ``export-onnx = true`` proves the spies see them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import onnxruntime
import pytest
import torch

from fedge.edge_export import manifest, pipeline
from fedge.server import federation
from fedge.server.metrics_history import MetricsHistory
from fedge.server.reference_data import load_reference_data
from fedge.server.round_summary import initial_row
from fedge.server.run_end_imports import (
    EXPORT_MODULES,
    RunEndImports,
    run_end_modules,
)
from fedge.server.run_folder import resolve_run_dir, start_run_folder
from fedge.server.starting_model import starting_model
from fedge.shared.config import from_run_config
from fedge.shared.evaluation import evaluate_model
from fedge.shared.records import state_dict_to_record

EDGE_FILES = {
    "model.onnx",
    "model.int8.onnx",
    "model.ort",
    "model.fixed.onnx",
    "model.optimized.onnx",
    "manifest.json",
}


class Spy:
    """Counts calls to ``owner.name`` and calls through to it."""

    def __init__(self, monkeypatch, owner, name):
        self.calls = 0
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


@pytest.fixture
def spies(monkeypatch):
    return {
        "export entry point": Spy(monkeypatch, pipeline, "export_run"),
        "torch.onnx.export": Spy(monkeypatch, torch.onnx, "export"),
        "int8 quantisation": Spy(monkeypatch, pipeline, "quantize_int8"),
        "latency timing": Spy(monkeypatch, pipeline, "batch1_latency_us"),
        "parity check": Spy(monkeypatch, pipeline, "check_parity"),
        "artefact checks": Spy(monkeypatch, pipeline, "compare"),
        "verification": Spy(monkeypatch, manifest, "verify_run"),
        "ONNX Runtime session": Spy(monkeypatch, onnxruntime, "InferenceSession"),
    }


def finish_a_trained_run(tmp_path: Path, *, export: bool, imports=None) -> Path:
    """Record a 1-round run of the mlp on digits, then run the end of the run."""
    config = from_run_config(
        {
            "output-dir": str(tmp_path),
            "run-name": "run",
            "num-server-rounds": 1,
            "export-onnx": export,
        },
        fill_defaults=True,
    )
    run_dir = resolve_run_dir(config)
    start_run_folder(run_dir, config)
    reference = load_reference_data(config.data)
    spec, model, start = starting_model(config, reference.preprocessing)
    central = evaluate_model(model, reference.x, reference.y)
    history = MetricsHistory(run_dir)
    history.append(initial_row(central))
    history.append(
        {**initial_row(central), "round": 1, "sampled": 2, "replies": 2}
        | {"failures": 0, "dropped": 0, "refused": 0, "aggregated": 2}
    )
    grid = type("Grid", (), {"get_node_ids": lambda self: [1, 2]})()
    return federation._finish(
        run_dir,
        config,
        spec,
        reference,
        state_dict_to_record(model.state_dict()),
        "",
        grid,
        start=start,
        run_end_imports=imports,
    )


def test_without_export_onnx_nothing_of_the_export_runs(tmp_path, spies):
    run_dir = finish_a_trained_run(tmp_path, export=False)

    assert json.loads((run_dir / "status.json").read_text())["state"] == "complete"
    assert (run_dir / "model_card.md").is_file()
    assert {name: spy.calls for name, spy in spies.items()} == dict.fromkeys(spies, 0)
    assert not EDGE_FILES & {p.name for p in run_dir.iterdir()}


@pytest.mark.slow
def test_with_export_onnx_the_spies_see_the_export(tmp_path, spies):
    run_dir = finish_a_trained_run(tmp_path, export=True)

    ran = {name for name, spy in spies.items() if spy.calls}
    # fedge verify is a command of its own, never part of a run's end
    assert ran == set(spies) - {"verification"}
    assert EDGE_FILES - {"model.optimized.onnx"} <= {p.name for p in run_dir.iterdir()}


def test_complete_is_the_last_thing_the_end_of_a_run_writes_or_logs(
    tmp_path, monkeypatch, caplog
):
    written_before_status: list[bool] = []
    write_status = federation.write_status

    def record(run_dir, state, *args, **kwargs):
        logged = "fedge run complete" in caplog.text
        written_before_status.append(logged)
        return write_status(run_dir, state, *args, **kwargs)

    monkeypatch.setattr(federation, "write_status", record)
    caplog.set_level(logging.INFO, logger="fedge.server")

    run_dir = finish_a_trained_run(tmp_path, export=False)

    assert written_before_status == [True]
    status_written = (run_dir / "status.json").stat().st_mtime_ns
    later = [
        p.relative_to(run_dir).as_posix()
        for p in run_dir.rglob("*")
        if p.stat().st_mtime_ns > status_written
    ]
    assert later == []


def test_the_end_waits_for_the_imports_made_ahead_of_it(tmp_path, monkeypatch, spies):
    # Prepare: a module that takes a while to import, imported ahead
    (tmp_path / "slow_probe_module.py").write_text(
        "import time\ntime.sleep(0.5)\nDONE = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "slow_probe_module", raising=False)
    imports = RunEndImports(("slow_probe_module",))
    card_started_after_import: list[bool] = []
    write_card = federation._write_card

    def card(run_dir):
        card_started_after_import.append(
            getattr(sys.modules.get("slow_probe_module"), "DONE", False)
        )
        write_card(run_dir)

    monkeypatch.setattr(federation, "_write_card", card)
    imports.start()

    finish_a_trained_run(tmp_path / "runs", export=False, imports=imports)

    assert card_started_after_import == [True]


def test_ahead_imports_run_in_a_thread_and_a_failing_one_does_not_stop_them(
    tmp_path, monkeypatch
):
    (tmp_path / "broken_probe_module.py").write_text("raise ImportError('nope')\n")
    (tmp_path / "thread_probe_module.py").write_text(
        "import threading\nTHREAD = threading.current_thread().name\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("broken_probe_module", "thread_probe_module"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    imports = RunEndImports(("broken_probe_module", "thread_probe_module"))

    imports.start()
    imports.start()  # a second start is a no-op
    imports.wait()

    probe = sys.modules["thread_probe_module"]
    assert probe.THREAD == "fedge-run-end-imports"
    assert "broken_probe_module" not in sys.modules


def test_imports_wait_returns_at_once_when_never_started():
    started = time.monotonic()
    RunEndImports(("fedge.reports.model_card",)).wait()
    assert time.monotonic() - started < 0.1


def test_only_a_run_that_exports_imports_ahead_the_exporter_and_the_card():
    exporting = from_run_config({"export-onnx": True}, fill_defaults=True)
    plain = from_run_config({"export-onnx": False}, fill_defaults=True)

    assert set(EXPORT_MODULES) <= set(run_end_modules(exporting))
    assert "fedge.reports.model_card" in run_end_modules(exporting)
    assert run_end_modules(plain) == ()


def test_nothing_to_import_starts_no_thread():
    imports = RunEndImports(())

    imports.start()

    assert imports._thread is None

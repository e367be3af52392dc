"""Embedded artefacts (ORT format, batch-1 static, offline-optimised) and budgets."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fedge.cli import export as cli_export
from fedge.edge_export import pipeline
from fedge.edge_export.embedded import check_budgets
from fedge.edge_export.manifest import read_manifest, verify_run
from fedge.edge_export.pipeline import export_run
from fedge.edge_export.runtime import EdgeModel
from fedge.shared.datasets import load_builtin
from fedge.shared.errors import ModelError

EMBEDDED = ("model.ort", "required_operators.config", "model.fixed.onnx")


def onnx_logits(path, x, *, one_at_a_time=False):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if not one_at_a_time:
        return session.run(None, {"input": x})[0]
    return np.concatenate(
        [session.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))]
    )


@pytest.mark.slow
def test_every_embedded_artefact_is_listed_hashed_and_agrees_with_the_onnx(series_run):
    manifest = read_manifest(series_run)
    x = load_builtin("basic-motions", "test").x
    reference = onnx_logits(series_run / "model.onnx", x)

    for name in EMBEDDED:
        assert name in manifest.artefacts
    assert verify_run(series_run).ok
    # Independently: ONNX Runtime loads the ORT-format file and gives the same logits.
    np.testing.assert_allclose(
        onnx_logits(series_run / "model.ort", x), reference, atol=1e-4
    )
    fixed = onnx.load(str(series_run / "model.fixed.onnx"))
    dims = [d.dim_value for d in fixed.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 6, 100]
    np.testing.assert_allclose(
        onnx_logits(series_run / "model.fixed.onnx", x, one_at_a_time=True),
        reference,
        atol=1e-4,
    )
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        onnx_logits(series_run / "model.fixed.onnx", x[:2])  # batch 2: refused
    operators = (series_run / "required_operators.config").read_text()
    assert "GRU" in operators and "Gemm" in operators  # the nn.GRU swap: one op
    checks = manifest.embedded["checks"]
    assert checks["model.fixed.onnx"]["mobile-usability"]["dynamic-values"] == 0
    assert checks["model.ort"]["max-abs-diff"] <= 1e-4


@pytest.mark.slow
def test_the_shipped_files_and_their_timings_agree_with_the_manifest(series_run):
    manifest = read_manifest(series_run)
    figures = manifest.embedded["batch1-one-thread"]
    kept = manifest.embedded["checks"]["model.optimized.onnx"]["kept"]

    assert (series_run / "model.optimized.onnx").is_file() == kept
    assert ("model.optimized.onnx" in manifest.artefacts) == kept
    if kept:
        assert (
            figures["model.optimized.onnx"]["p50-us"] < figures["model.onnx"]["p50-us"]
        )
    assert {"model.onnx", "model.ort", "model.fixed.onnx"} <= set(figures)
    for name, entry in figures.items():
        assert entry["size-kib"] == pytest.approx(
            os.path.getsize(series_run / name) / 1024
        )
        assert 0 < entry["p50-us"] <= entry["p95-us"]


@pytest.mark.slow
def test_the_runtime_loads_the_ort_and_fixed_files_with_their_metadata(series_run):
    x = load_builtin("basic-motions", "test").x[:5]
    expected = EdgeModel.load(series_run / "model.onnx").predict(x)

    for name in ("model.ort", "model.fixed.onnx"):
        got = EdgeModel.load(series_run / name).predict(x)  # fixed: 5 calls of 1
        assert got.class_labels == ("badminton", "running", "standing", "walking")
        np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-5)


# ---------------------------------------------------------------- budgets
MEASURED = {
    "a.onnx": {"size-kib": 10.0, "p50-us": 100.0},
    "b.onnx": {"size-kib": 5.0, "p50-us": 300.0},
}


def test_budgets_return_the_artefacts_within_all_of_them():
    assert check_budgets(MEASURED, max_size_kib=None, max_latency_us=None) == [
        "a.onnx",
        "b.onnx",
    ]
    assert check_budgets(MEASURED, max_size_kib=6, max_latency_us=None) == ["b.onnx"]
    assert check_budgets(MEASURED, max_size_kib=20, max_latency_us=150) == ["a.onnx"]


def test_over_budget_says_by_how_much_and_which_artefact_came_closest():
    with pytest.raises(
        ModelError,
        match=r"no exported artefact meets every budget; --max-size-kib 2: closest "
        r"is b\.onnx at 5\.0 KiB \(3\.0 KiB over\); --max-latency-us 50: closest is "
        r"a\.onnx at 100\.0 µs \(50\.0 µs over\)\. Nothing was written",
    ):
        check_budgets(MEASURED, max_size_kib=2, max_latency_us=50)
    # Each budget alone is met by some file, but no file meets both.
    with pytest.raises(
        ModelError, match=r"closest is b\.onnx at 5\.0 KiB \(within it\)"
    ):
        check_budgets(MEASURED, max_size_kib=6, max_latency_us=150)


@pytest.mark.parametrize(
    ("optimized_p50_us", "kept"),
    [(50.0, True), (100.0, False), (200.0, False)],  # model.onnx takes 100 µs
)
def test_the_optimised_graph_is_shipped_exactly_when_it_was_faster(
    digits_run, copy_run, monkeypatch, optimized_p50_us, kept
):
    # The timings are injected: the decision is tested, not the clock.
    p50_us = {"model.onnx": 100.0, "model.optimized.onnx": optimized_p50_us}

    def timed(path, example):
        p50 = p50_us.get(path.name, 150.0)
        return {"p50-us": p50, "p95-us": p50 + 10.0}

    monkeypatch.setattr(pipeline, "batch1_latency_us", timed)
    run_dir = copy_run(digits_run)

    manifest = export_run(run_dir, quantize="none")

    assert (run_dir / "model.optimized.onnx").is_file() == kept
    assert ("model.optimized.onnx" in manifest.artefacts) == kept
    assert manifest.embedded["checks"]["model.optimized.onnx"]["kept"] == kept
    figures = manifest.embedded["batch1-one-thread"]
    assert ("model.optimized.onnx" in figures) == kept
    assert figures["model.onnx"]["p50-us"] == 100.0
    assert read_manifest(run_dir).artefacts.keys() == manifest.artefacts.keys()


def test_an_export_over_budget_writes_nothing(digits_run, copy_run):
    run_dir = copy_run(digits_run)
    before = {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    with pytest.raises(
        ModelError, match=r"--max-size-kib 0\.5: closest is .* KiB over"
    ):
        export_run(run_dir, quantize="none", max_size_kib=0.5)

    assert {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_export_refuses_a_non_positive_budget_in_one_line(tmp_path, capsys):
    parser_args = ["export", str(tmp_path), "--max-latency-us", "0"]
    import argparse

    parser = argparse.ArgumentParser(prog="fedge")
    cli_export.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(parser_args)

    assert args.run(args) == 2
    assert capsys.readouterr().err.strip() == (
        "fedge export: error: --max-latency-us must be > 0, got 0"
    )

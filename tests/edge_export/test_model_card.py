"""The model card: every figure equals the run folder's own files."""

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fedge.edge_export.embedded import LATENCY_RUNS, LATENCY_WARMUP
from fedge.edge_export.manifest import verify_run
from fedge.edge_export.run_inputs import held_out_data, load_run_inputs
from fedge.reports.model_card import render_markdown, write_run_card


def card_of(run_dir):
    return json.loads((run_dir / "model_card.json").read_text())


def test_export_writes_the_card_lists_it_in_the_manifest_and_it_verifies(digits_run):
    manifest = json.loads((digits_run / "manifest.json").read_text())

    assert manifest["artefacts"]["model_card.json"]["role"] == "model-card"
    assert manifest["artefacts"]["model_card.md"]["role"] == "model-card-text"
    assert verify_run(digits_run).ok


def test_the_cards_figures_equal_the_run_folders_files(digits_run):
    card = card_of(digits_run)
    model = json.loads((digits_run / "model.json").read_text())
    manifest = json.loads((digits_run / "manifest.json").read_text())

    assert card["performance"]["central"] == model["metrics"]
    assert card["privacy"]["epsilon-max"] == model["privacy"]["epsilon-max"] == 3.25
    assert (
        card["training-data"]["dataset-fingerprint"]
        == (model["provenance"]["dataset-fingerprint"])
    )
    for name, size in card["edge"]["artefacts"].items():
        assert size == manifest["artefacts"][name]["size-bytes"]
        assert size == (digits_run / name).stat().st_size
    assert card["edge"]["accuracy"] == manifest["accuracy"]
    int8, fp32 = manifest["accuracy"]["onnx-int8"], manifest["accuracy"]["onnx-fp32"]
    assert card["edge"]["int8-accuracy-change-points"] == pytest.approx(
        100 * (int8 - fp32)
    )
    assert card["edge"]["parity"]["max-abs-diff"] == manifest["parity"]["max-abs-diff"]
    for path in card["files"]:
        assert (digits_run / path).is_file()
    assert card["explanations"]["model"].startswith("ONNX Runtime")


def test_the_cards_batch1_latency_is_the_manifests_for_every_model_file(digits_run):
    card = card_of(digits_run)
    manifest = json.loads((digits_run / "manifest.json").read_text())
    text = (digits_run / "model_card.md").read_text()
    model_roles = {
        "onnx-fp32",
        "onnx-int8",
        "ort-format",
        "onnx-fp32-batch1-static",
        "onnx-fp32-optimized",
    }
    model_files = {
        name
        for name, entry in manifest["artefacts"].items()
        if entry["role"] in model_roles
    }

    latency = card["edge"]["batch1-latency-p50-us"]
    # Every model file the export wrote, and nothing it did not write.
    assert set(latency) == model_files
    assert {"model.onnx", "model.int8.onnx", "model.ort"} <= model_files
    for name, p50_us in latency.items():
        assert p50_us == manifest["embedded"]["batch1-one-thread"][name]["p50-us"]
        assert math.isfinite(p50_us) and p50_us > 0
        assert f"{name} {p50_us:.1f} µs" in text
    timing = card["edge"]["batch1-latency-measured"]
    assert timing == manifest["embedded"]["batch1-timing"]
    assert timing["threads"] == 1 and timing["batch"] == 1
    assert (timing["warm-up-runs"], timing["timed-runs"]) == (
        LATENCY_WARMUP,
        LATENCY_RUNS,
    )
    assert timing["engine"].startswith("onnxruntime ")
    assert timing["measured-on"].startswith("the exporting machine")
    assert f"measured on {timing['measured-on']}, not on the device" in text


def test_a_card_from_an_export_without_latency_has_no_latency_line(
    copy_run, digits_run
):
    run_dir = copy_run(digits_run)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for key in ("batch1-one-thread", "batch1-timing"):
        del manifest["embedded"][key]
    (run_dir / "manifest.json").write_text(json.dumps(manifest))

    write_run_card(run_dir)

    card = card_of(run_dir)
    assert "batch1-latency-p50-us" not in card["edge"]
    assert "batch-1 latency" not in (run_dir / "model_card.md").read_text()


def test_per_class_figures_are_those_of_the_onnx_model_on_the_held_out_split(
    digits_run,
):
    import onnxruntime as ort

    card = card_of(digits_run)
    test = held_out_data(load_run_inputs(digits_run))
    session = ort.InferenceSession(str(digits_run / "model.onnx"))
    name = session.get_inputs()[0].name
    predicted = session.run(None, {name: test.x})[0].argmax(axis=1)

    per_class = card["performance"]["per-class"]
    for k, figures in enumerate(per_class.values()):
        true_k, said_k = test.y == k, predicted == k
        assert figures["support"] == int(true_k.sum())
        assert figures["recall"] == pytest.approx(
            (said_k & true_k).sum() / true_k.sum()
        )
        assert figures["precision"] == pytest.approx(
            (said_k & true_k).sum() / max(said_k.sum(), 1)
        )
    # One saliency figure per class, each of the first two held-out examples.
    assert sorted(card["explanations"]["saliency"]) == [str(k) for k in range(10)]


def test_sections_with_nothing_to_say_are_left_out(digits_run):
    card = card_of(digits_run)
    text = (digits_run / "model_card.md").read_text()

    # No model-description, no per-client evaluation (no metrics.jsonl here).
    assert "intended-use" not in card and "## Intended use" not in text
    assert "per-client" not in card["performance"] and "Per client" not in text
    assert "## On the device" in text and "## Explanations" in text


def test_a_tabular_card_ranks_the_original_columns(tabular_run):
    card = card_of(tabular_run)
    table = pd.read_csv(tabular_run / card["explanations"]["table"])

    ranking = card["explanations"]["feature-importance"]
    # Per original column: "colour"'s three one-hot inputs count as one.
    assert sorted(c["column"] for c in ranking) == ["age", "colour", "income"]
    assert [c["column"] for c in ranking] == list(table["column"])
    assert np.allclose([c["importance"] for c in ranking], table["importance"])
    importances = [c["importance"] for c in ranking]
    assert importances == sorted(importances, reverse=True)
    assert ranking[0]["importance"] > 0  # the label depends on every column


def test_the_card_without_an_export_explains_the_pytorch_model(copy_run, digits_run):
    run_dir = copy_run(digits_run)
    for name in ("manifest.json", "model.onnx", "model.int8.onnx"):
        (run_dir / name).unlink()

    write_run_card(run_dir)

    card = card_of(run_dir)
    assert "edge" not in card
    assert card["explanations"]["model"].startswith("PyTorch")
    assert (run_dir / "model_card.md").read_text() == render_markdown(card)


@pytest.mark.parametrize(
    ("max_clients", "sampled"), [(1, True), (2, False), (0, False)]
)
def test_the_card_says_when_per_client_figures_come_from_a_sample(
    copy_run, digits_run, max_clients, sampled
):
    from fedge.shared.config import from_run_config
    from fedge.shared.run_folder import save_run_config

    run_dir = copy_run(digits_run)  # model.json: 2 nodes
    save_run_config(
        run_dir,
        from_run_config(
            {"dataset": "digits", "fairness-max-clients": max_clients},
            fill_defaults=True,
        ),
    )
    evaluated = {"node-id": 5, "accuracy": 0.5, "num-examples": 4}
    (run_dir / "metrics.jsonl").write_text(
        json.dumps(
            {
                "round": 3,
                "clients-evaluated": 1,
                "client-accuracy-worst": 0.5,
                "client-evaluation": [evaluated],
            }
        )
        + "\n"
    )

    write_run_card(run_dir)

    per_client = card_of(run_dir)["performance"]["per-client"]
    assert per_client["clients-evaluated"] == 1
    text = (run_dir / "model_card.md").read_text()
    if sampled:
        assert per_client["sample"].startswith(
            "a seeded random sample of 1 of 2 nodes (fairness-max-clients = 1)"
        )
        assert f"- sample: {per_client['sample']}" in text
    else:
        assert "sample" not in per_client and "random sample" not in text


def test_a_fault_injection_run_gets_its_card_naming_the_faults(
    tmp_path, copy_run, digits_run
):
    from fedge.simulations.fault_app import write_fault_app
    from fedge.simulations.fault_config import fault_config
    from fedge.simulations.simulate import APP_DIR

    run_dir = copy_run(digits_run)
    (run_dir / "model_card.md").unlink()
    faults = fault_config({"fault-attack": "sign-flip", "fault-attackers": 1})
    (run_dir / "faults.json").write_text(json.dumps(faults.to_run_config()))
    # A simulation with faults runs a copy of the app whose pyproject also
    # declares the fault-* keys; that copy's ServerApp writes the card.
    app_copy = write_fault_app(APP_DIR, tmp_path / "fault-app", faults)
    script = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
        "import fedge.shared as shared; assert shared.__file__.startswith(sys.argv[1]), shared; "
        "from fedge.reports.model_card import write_run_card; "
        "write_run_card(Path(sys.argv[2]))"
    )

    done = subprocess.run(
        [sys.executable, "-c", script, str(app_copy), str(run_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    card = card_of(run_dir)
    assert card["training-data"]["injected-faults"] == {
        "fault-attack": "sign-flip",
        "fault-attackers": 1,
        "fault-scale": 10.0,
        "fault-dropout": 0.0,
        "fault-seed": 0,
        "fault-wipe-state": "",
    }
    text = (run_dir / "model_card.md").read_text()
    assert "fault-attack = sign-flip, fault-attackers = 1" in text
    assert text == render_markdown(card)

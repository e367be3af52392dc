"""The model card of a run: ``model_card.json`` and ``model_card.md``.

Who the model serves and under what guarantee, in the sections of the
model-card literature (Mitchell et al. 2019): intended use, training data,
privacy, performance (overall, per class and per client), explanations, edge
figures and versions. Every figure is read from the run folder (``model.json``,
``config.json``, ``metrics.csv``/``.jsonl``, ``partitions.csv``,
``faults.json``, ``manifest.json``) or computed here on the coordinator's held-out data, so the
card never disagrees with the files beside it. A section with nothing to say is
left out, not filled with placeholders.

Written at the end of every run and again by ``fedge export``
(:func:`export_run_with_card`), which lists the card in the export manifest. Its
figures go to ``card/``; :mod:`fedge.reports.model_card_markdown` renders the text.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedge.edge_export.explanations import (
    OCCLUSION_BASELINE,
    PERMUTATION_REPEATS,
    Predict,
    column_groups,
    examples_per_class,
    occlusion_saliency,
    onnx_predictor,
    permutation_importance,
)
from fedge.edge_export.manifest import Manifest, read_manifest
from fedge.edge_export.onnx_export import torch_logits
from fedge.edge_export.run_inputs import RunInputs, held_out_data, load_run_inputs
from fedge.reports.card_figures import (
    plot_confusion_matrix,
    plot_importance,
    plot_saliency,
)
from fedge.reports.model_card_markdown import (
    PARAMETER_PROVENANCE,
    START_PROVENANCE,
    render_markdown,
)
from fedge.shared import keys
from fedge.shared.atomic_io import atomic_write_json, atomic_write_text
from fedge.shared.datasets import Dataset
from fedge.shared.json_records import json_safe, read_jsonl
from fedge.shared.metrics import per_class_metrics
from fedge.shared.run_folder import (
    BATCH1_LATENCY,
    BATCH1_TIMING,
    CARD_DIR,
    CLIENT_EVALUATION,
    CLIENTS,
    CONFIG_FILE,
    CONFUSION_MATRIX_FILE,
    FAIRNESS_COLUMNS,
    FAULTS_FILE,
    FEATURE_IMPORTANCE_CSV,
    FEATURE_IMPORTANCE_PNG,
    MANIFEST_FILE,
    METRICS_JSONL_FILE,
    MODEL_CARD_JSON_FILE,
    MODEL_CARD_MARKDOWN_FILE,
    ONNX_FP32_FILE,
    OUTSIDE_DP_GUARANTEE,
    PARTITIONS_FILE,
    PER_CLIENT_FIGURES,
    ROUND,
    SALIENCY_PNG,
)

CARD_FORMAT = "fedge-model-card/1"


def write_run_card(
    run_dir: str | Path,
    *,
    manifest: Manifest | None = None,
    onnx_path: Path | None = None,
) -> list[Path]:
    """Compute the card's figures and write the card files into ``run_dir``.

    Parameters
    ----------
    run_dir : path-like
        A finished run folder (``model.pt``, ``model.json``, ``config.json``).
    manifest : Manifest, optional
        The export's manifest; read from ``manifest.json`` when absent and the
        folder has one.
    onnx_path : Path, optional
        The ONNX model to explain; ``model.onnx`` of an exported folder when
        absent, else the PyTorch model is explained.

    Returns
    -------
    list of Path
        ``model_card.json`` and ``model_card.md`` (the card's figures under
        ``card/`` are listed inside the JSON).

    Raises
    ------
    ModelError
        When the run folder cannot be read (see :func:`load_run_inputs`).
    """
    run_dir = Path(run_dir)
    run = load_run_inputs(run_dir)
    if manifest is None and (run_dir / MANIFEST_FILE).is_file():
        manifest = read_manifest(run_dir)
    if onnx_path is None and manifest is not None:
        candidate = run_dir / ONNX_FP32_FILE
        onnx_path = candidate if candidate.is_file() else None
    card = build_card(run, held_out_data(run), manifest=manifest, onnx_path=onnx_path)
    json_path = run_dir / MODEL_CARD_JSON_FILE
    markdown_path = run_dir / MODEL_CARD_MARKDOWN_FILE
    atomic_write_json(json_path, card)
    # Rendered from the file as written, so the text shows exactly its figures.
    written = json.loads(json_path.read_text(encoding="utf-8"))
    atomic_write_text(markdown_path, render_markdown(written))
    return [json_path, markdown_path]


def export_run_with_card(run_dir: str | Path, **options: Any) -> Manifest:
    """Export a run for devices with its model card, listed in the manifest.

    The card explains the checked ONNX model before it is published; its own
    hash then goes into the manifest, so ``fedge verify`` covers it.

    Parameters
    ----------
    run_dir : path-like
        A finished run folder.
    **options
        :func:`fedge.edge_export.pipeline.export_run`'s keyword arguments.

    Returns
    -------
    Manifest
    """
    from fedge.edge_export.pipeline import export_run  # torch, onnx: only here

    return export_run(run_dir, write_artefacts=_write_export_card, **options)


def _write_export_card(
    run_dir: Path, manifest: Manifest, onnx_path: Path
) -> list[Path]:
    return write_run_card(run_dir, manifest=manifest, onnx_path=onnx_path)


def build_card(
    run: RunInputs,
    test: Dataset,
    *,
    manifest: Manifest | None,
    onnx_path: Path | None,
) -> dict[str, Any]:
    """Return the card as a JSON object; its figures are written to ``card/``."""
    run_dir = run.run_dir
    figures_dir = run_dir / CARD_DIR
    # The folder is the card's alone: figures of an earlier card must not linger.
    shutil.rmtree(figures_dir, ignore_errors=True)
    figures_dir.mkdir()
    if onnx_path is not None:
        predict, engine = onnx_predictor(onnx_path), f"ONNX Runtime ({ONNX_FP32_FILE})"
    else:
        model = run.model

        def predict(x: np.ndarray) -> np.ndarray:
            return torch_logits(model, x)

        engine = "PyTorch (no ONNX export in this folder)"
    records = read_jsonl(run_dir / METRICS_JSONL_FILE)
    config = run.config
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "model": {
            "run": run_dir.name,
            "architecture": run.spec.to_dict(),
            "input-kind": run.preprocessing.kind,
            "classes": list(run.preprocessing.class_names),
        },
    }
    if run.spec.identity is not None:  # the user's own model: which code it is
        card["model"]["code"] = run.spec.identity.to_dict()
    if config.report.model_description:
        card["intended-use"] = {"description": config.report.model_description}
    card["training-data"] = _training_data(run, records)
    card["privacy"] = _privacy(run, records)
    card["performance"] = _performance(run, test, predict, records, figures_dir)
    card["explanations"] = {
        "model": engine,
        "data": f"{test.source} ({len(test)} held-out examples)",
        **_explanations(run, test, predict, figures_dir),
    }
    if manifest is not None:
        card["edge"] = _edge(manifest)
    card["versions"] = _versions(run_dir, manifest)
    card["files"] = sorted(
        p.relative_to(run_dir).as_posix() for p in figures_dir.iterdir()
    )
    safe: dict[str, Any] = json_safe(card)
    return safe


# ------------------------------------------------------------------ sections
def _training_data(run: RunInputs, records: list[dict[str, Any]]) -> dict[str, Any]:
    provenance = run.model_info.provenance
    prep = run.preprocessing
    section: dict[str, Any] = {
        "dataset": provenance.get("dataset"),
        "dataset-fingerprint": provenance.get("dataset-fingerprint"),
        "nodes": provenance.get("num-clients"),
        "rounds": provenance.get("rounds"),
        "strategy": provenance.get("strategy"),
        "preprocessing": _preprocessing_summary(prep.to_dict()),
    }
    # Where the weights started (a pretrained file and its hash) and which
    # parameters the federation left frozen at them.
    for key in (*START_PROVENANCE, *PARAMETER_PROVENANCE):
        if key in provenance:
            section[key] = provenance[key]
    faults_path = run.run_dir / FAULTS_FILE
    if faults_path.is_file():  # a simulation that injected faults says which
        section["injected-faults"] = json.loads(faults_path.read_text())
    nodes = _nodes_from_partitions(run.run_dir / PARTITIONS_FILE)
    if nodes:
        section["per-node"] = nodes
        section["per-node-source"] = f"{PARTITIONS_FILE} (each node's whole share)"
    else:
        nodes = _nodes_from_replies(records)
        if nodes:
            section["per-node"] = nodes
            section["per-node-source"] = (
                "the nodes' replies: training examples, and the labels of each "
                "node's local test split"
            )
    return section


def _preprocessing_summary(prep: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {"kind": prep.get("kind")}
    if prep.get("kind") == "tabular":
        summary.update(
            {
                "standardised-numeric-columns": list(prep.get("numeric_columns", [])),
                "one-hot-columns": {
                    k: len(v) for k, v in (prep.get("categories") or {}).items()
                },
                "impute": prep.get("impute"),
            }
        )
    else:
        summary.update(
            {
                k: v
                for k, v in prep.items()
                if k not in ("class_names", "kind") and v not in ([], {}, None, "")
            }
        )
    return summary


def _nodes_from_partitions(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    frame = pd.read_csv(path)
    labels = [c for c in frame.columns if c.startswith("label-")]
    return [
        {
            keys.PARTITION_ID: int(row[keys.PARTITION_ID]),
            keys.NUM_EXAMPLES: int(row[keys.NUM_EXAMPLES]),
            keys.LABEL_COUNTS: [int(row[c]) for c in labels],
        }
        for _, row in frame.iterrows()
    ]


def _nodes_from_replies(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    nodes: dict[Any, dict[str, Any]] = {}
    for record in records:
        for client in record.get(CLIENTS) or []:
            if keys.NUM_EXAMPLES in client and "node-id" in client:
                nodes.setdefault(client["node-id"], {})["train-examples"] = client[
                    keys.NUM_EXAMPLES
                ]
    for client in _last_client_evaluation(records)[1]:
        entry = nodes.setdefault(client["node-id"], {})
        entry["test-examples"] = client.get(keys.NUM_EXAMPLES)
        entry["test-" + keys.LABEL_COUNTS] = client.get(keys.LABEL_COUNTS)
    return [{"node-id": node, **figures} for node, figures in nodes.items()]


def _privacy(run: RunInputs, records: list[dict[str, Any]]) -> dict[str, Any]:
    summary = run.model_info.privacy.to_dict()
    mode = summary.get("dp-mode", "none")
    section: dict[str, Any] = dict(summary)
    if mode == "sample":
        per_node: dict[str, float] = {}
        for record in records:
            for client in record.get(CLIENTS) or []:
                epsilon = client.get(keys.EPSILON)
                if isinstance(epsilon, int | float) and math.isfinite(epsilon):
                    node = str(client.get("node-id"))
                    per_node[node] = max(per_node.get(node, 0.0), float(epsilon))
        section["epsilon-per-node"] = per_node
        section["covered"] = (
            "each training example of each node (sample-level DP-SGD, Opacus): "
            "the model weights and every update a node sent"
        )
    elif mode == "central":
        section["covered"] = (
            "each node's whole contribution (user-level DP, Flower's server-side "
            "clipping and noise): the aggregated model weights"
        )
    else:
        section["covered"] = "nothing: this run used no differential privacy"
    not_covered = [
        "the central metrics on the coordinator's own held-out data",
    ]
    if mode != "none" and _last_client_evaluation(records)[1]:
        not_covered.append(
            f"the {PER_CLIENT_FIGURES}: {OUTSIDE_DP_GUARANTEE}; "
            "fairness-report = false turns them off"
        )
    if mode == "sample":
        not_covered.append("the number of examples each node reports")
    section["not-covered"] = not_covered
    return section


def _performance(
    run: RunInputs,
    test: Dataset,
    predict: Predict,
    records: list[dict[str, Any]],
    figures_dir: Path,
) -> dict[str, Any]:
    names = list(run.preprocessing.class_names)
    predicted = np.argmax(predict(test.x), axis=1)
    per_class, confusion = per_class_metrics(test.y, predicted, len(names))
    plot_confusion_matrix(confusion, names, figures_dir / CONFUSION_MATRIX_FILE)
    section: dict[str, Any] = {
        "central": dict(run.model_info.metrics),
        "held-out": f"{test.source} ({len(test)} examples)",
        "per-class": dict(zip(names, per_class, strict=True)),
        "confusion-matrix": f"{CARD_DIR}/{CONFUSION_MATRIX_FILE}",
    }
    evaluated_round, clients = _last_client_evaluation(records)
    if clients:
        row = next(r for r in records if r.get(ROUND) == evaluated_round)
        section["per-client"] = {
            ROUND: evaluated_round,
            "threshold": run.config.report.fairness_threshold,
            **{c: row.get(c) for c in FAIRNESS_COLUMNS},
        }
        cap = run.config.report.fairness_max_clients
        nodes = run.model_info.provenance.get("num-clients")
        if cap and isinstance(nodes, int) and nodes > cap:
            section["per-client"]["sample"] = (
                f"a seeded random sample of {cap} of {nodes} nodes "
                f"(fairness-max-clients = {cap}): the sample's worst client need "
                "not be the worst of all"
            )
    return section


def _explanations(
    run: RunInputs, test: Dataset, predict: Predict, figures_dir: Path
) -> dict[str, Any]:
    if run.preprocessing.kind == "tabular":
        importances = permutation_importance(
            predict, test.x, test.y, column_groups(run.preprocessing)
        )
        frame = pd.DataFrame(
            [
                {
                    "column": c.column,
                    "importance": c.importance,
                    "std": c.std,
                    "encoded-positions": c.encoded_positions,
                }
                for c in importances
            ]
        )
        atomic_write_text(
            figures_dir / FEATURE_IMPORTANCE_CSV, frame.to_csv(index=False)
        )
        plot_importance(importances, figures_dir / FEATURE_IMPORTANCE_PNG)
        return {
            "method": (
                f"permutation importance: held-out accuracy lost when a column is "
                f"shuffled, mean of {PERMUTATION_REPEATS} shuffles; a categorical "
                "column's one-hot block is shuffled as one"
            ),
            "feature-importance": [
                {"column": c.column, "importance": c.importance, "std": c.std}
                for c in importances
            ],
            "table": f"{CARD_DIR}/{FEATURE_IMPORTANCE_CSV}",
            "figure": f"{CARD_DIR}/{FEATURE_IMPORTANCE_PNG}",
        }
    names = run.preprocessing.class_names
    chosen = examples_per_class(test.y, len(names))
    figures: dict[str, str] = {}
    patch: tuple[int, ...] = ()
    for k, indices in chosen.items():
        saliency, patch = occlusion_saliency(predict, test.x[indices], test.y[indices])
        name = SALIENCY_PNG.format(class_index=k)
        plot_saliency(
            test.x[indices],
            saliency,
            f"class {names[k]}: probability lost when a patch is occluded",
            figures_dir / name,
        )
        figures[names[k]] = f"{CARD_DIR}/{name}"
    return {
        "method": (
            f"occlusion saliency: drop in the true class's probability when a "
            f"patch of {'x'.join(map(str, patch))} positions (all channels) is set "
            f"to {OCCLUSION_BASELINE:g}"
        ),
        "examples-per-class": max((len(v) for v in chosen.values()), default=0),
        "saliency": figures,
    }


def _edge(manifest: Manifest) -> dict[str, Any]:
    accuracy = manifest.accuracy
    fp32, int8 = accuracy.get("onnx-fp32"), accuracy.get("onnx-int8")
    section: dict[str, Any] = {
        "artefacts": {
            name: entry.get("size-bytes")
            for name, entry in manifest.artefacts.items()
            if name.endswith(".onnx")
        },
        "accuracy": accuracy,
        "parity": {
            k: manifest.parity.get(k)
            for k in ("max-abs-diff", "tolerance", "top1-agreement")
            if k in manifest.parity
        },
        "int8-kept": manifest.quantization.get("chosen"),
    }
    if isinstance(fp32, int | float) and isinstance(int8, int | float):
        section["int8-accuracy-change-points"] = 100.0 * (int8 - fp32)
    latency = manifest.embedded.get(BATCH1_LATENCY) or {}
    if latency:  # an export before fedge measured it has none
        section["batch1-latency-p50-us"] = {
            name: figures["p50-us"] for name, figures in latency.items()
        }
        timing = manifest.embedded.get(BATCH1_TIMING)
        section["batch1-latency-measured"] = timing or {
            "measured-on": "the exporting machine (no details recorded)"
        }
    return section


def _versions(run_dir: Path, manifest: Manifest | None) -> dict[str, Any]:
    versions: dict[str, Any] = {}
    config_path = run_dir / CONFIG_FILE
    if config_path.is_file():
        versions.update(json.loads(config_path.read_text()).get("versions") or {})
    if manifest is not None:
        versions.update(manifest.export.get("versions") or {})
    return dict(sorted(versions.items()))


# ------------------------------------------------------------------ helpers
def _last_client_evaluation(
    records: list[dict[str, Any]],
) -> tuple[int | None, list[dict[str, Any]]]:
    for record in reversed(records):
        clients = record.get(CLIENT_EVALUATION)
        if isinstance(clients, list) and clients:
            return record.get(ROUND), clients
    return None, []

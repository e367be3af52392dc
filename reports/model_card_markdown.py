"""``model_card.md``: the model card's JSON (:mod:`fedge.reports.model_card`) as text."""

from __future__ import annotations

from typing import Any

from fedge.shared import keys
from fedge.shared.run_folder import (
    EPSILON_MAX,
    FAULTS_FILE,
    PROVENANCE_FROZEN,
    PROVENANCE_INITIAL_WEIGHTS,
    PROVENANCE_INITIAL_WEIGHTS_SHA256,
    PROVENANCE_TRAINABLE,
    ROUND,
)

# Provenance of a run started from pretrained weights, with frozen parameters.
START_PROVENANCE = (PROVENANCE_INITIAL_WEIGHTS, PROVENANCE_INITIAL_WEIGHTS_SHA256)
PARAMETER_PROVENANCE = (PROVENANCE_TRAINABLE, PROVENANCE_FROZEN)


def render_markdown(card: dict[str, Any]) -> str:
    """Return ``model_card.md`` for a card from :func:`fedge.reports.model_card.build_card`."""
    model = card["model"]
    lines = [
        f"# Model card: run `{model['run']}`",
        "",
        f"A `{model['architecture'].get('name')}` classifier of "
        f"{model['input-kind']} inputs into {len(model['classes'])} classes, "
        "trained by federated learning with fedge.",
        "",
    ]
    code = model.get("code")
    if code:
        package = (
            f", from package {code['package']} {code['version']}"
            if code.get("package")
            else ""
        )
        lines += [
            f"The model's own code: `{code['reference']}` (source file SHA-256 "
            f"`{code['sha256']}`{package}).",
            "",
        ]
    if "intended-use" in card:
        lines += ["## Intended use", "", card["intended-use"]["description"], ""]
    lines += _data_markdown(card["training-data"])
    lines += _privacy_markdown(card["privacy"])
    lines += _performance_markdown(card["performance"])
    lines += _explanations_markdown(card["explanations"])
    if "edge" in card:
        lines += _edge_markdown(card["edge"])
    if card.get("versions"):
        lines += ["## Versions", ""]
        lines += [f"- {k}: {v}" for k, v in card["versions"].items()]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _data_markdown(data: dict[str, Any]) -> list[str]:
    lines = ["## Training data", ""]
    for key in ("dataset", "dataset-fingerprint", "nodes", "rounds", "strategy"):
        if data.get(key) is not None:
            lines.append(f"- {key}: {data[key]}")
    for key in START_PROVENANCE:
        if data.get(key):
            lines.append(f"- {key}: {data[key]}")
    for key in PARAMETER_PROVENANCE:
        if data.get(key):
            lines.append(f"- {key} parameters: {', '.join(data[key])}")
    faults = data.get("injected-faults")
    if faults:
        lines.append(
            "- injected faults (a simulation's test of robustness, from "
            f"{FAULTS_FILE}): " + ", ".join(f"{k} = {v}" for k, v in faults.items())
        )
    prep = data.get("preprocessing") or {}
    lines.append(
        "- preprocessing: "
        + ", ".join(f"{k} = {v}" for k, v in prep.items() if v not in ([], {}))
    )
    nodes = data.get("per-node") or []
    if nodes:
        lines += ["", f"Per node (from {data.get('per-node-source')}):", ""]
        # Who first, then how much: JSON keeps the keys sorted.
        first = (keys.PARTITION_ID, "node-id", keys.NUM_EXAMPLES, "train-examples")
        columns = [c for c in first if c in nodes[0]]
        columns += [c for c in nodes[0] if c not in columns]
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for node in nodes:
            lines.append("| " + " | ".join(_cell(node.get(c)) for c in columns) + " |")
    return [*lines, ""]


def _privacy_markdown(privacy: dict[str, Any]) -> list[str]:
    lines = ["## Privacy", "", f"- dp-mode: {privacy.get('dp-mode')}"]
    for key in (
        EPSILON_MAX,
        "delta",
        "accountant",
        "noise-multiplier",
        "max-grad-norm",
        "clipping-norm",
        "level",
    ):
        if privacy.get(key) is not None:
            lines.append(f"- {key}: {_cell(privacy[key])}")
    per_node = privacy.get("epsilon-per-node") or {}
    if per_node:
        lines.append(
            "- ε per node: " + ", ".join(f"{k}: {v:.3f}" for k, v in per_node.items())
        )
    lines.append(f"- covered: {privacy.get('covered')}")
    lines += [f"- not covered: {item}" for item in privacy.get("not-covered", [])]
    return [*lines, ""]


def _performance_markdown(performance: dict[str, Any]) -> list[str]:
    lines = [
        "## Performance",
        "",
        f"Central metrics on {performance['held-out']}:",
        "",
    ]
    lines += [f"- {k}: {_cell(v)}" for k, v in performance["central"].items()]
    lines += ["", "| class | precision | recall | support |", "|---|---|---|---|"]
    for name, figures in performance["per-class"].items():
        lines.append(
            f"| {name} | {figures['precision']:.3f} | {figures['recall']:.3f} | "
            f"{figures['support']} |"
        )
    lines += ["", f"![confusion matrix]({performance['confusion-matrix']})", ""]
    per_client = performance.get("per-client")
    if per_client:
        lines += [
            f"Per client (round {per_client[ROUND]} model on each node's own test "
            "split, every node counted once):",
            "",
        ]
        lines += [
            f"- {k}: {_cell(v)}"
            for k, v in per_client.items()
            if k != ROUND and v is not None
        ]
        lines.append("")
    return lines


def _explanations_markdown(explanations: dict[str, Any]) -> list[str]:
    lines = [
        "## Explanations",
        "",
        f"Computed with {explanations['model']} on {explanations['data']}: "
        f"{explanations['method']}.",
        "",
    ]
    importance = explanations.get("feature-importance")
    if importance:
        lines += ["| column | accuracy lost | std |", "|---|---|---|"]
        lines += [
            f"| {c['column']} | {c['importance']:.4f} | {c['std']:.4f} |"
            for c in importance
        ]
        lines += ["", f"![feature importance]({explanations['figure']})", ""]
    for name, path in (explanations.get("saliency") or {}).items():
        lines += [f"![saliency, class {name}]({path})", ""]
    return lines


def _edge_markdown(edge: dict[str, Any]) -> list[str]:
    lines = ["## On the device", ""]
    for name, size in edge["artefacts"].items():
        lines.append(f"- {name}: {size} bytes")
    accuracy = edge.get("accuracy") or {}
    for key in ("pytorch", "onnx-fp32", "onnx-int8"):
        if accuracy.get(key) is not None:
            lines.append(f"- accuracy ({key}): {accuracy[key]:.4f}")
    if "int8-accuracy-change-points" in edge:
        lines.append(
            f"- int8 accuracy change: {edge['int8-accuracy-change-points']:+.2f} points"
        )
    parity = edge.get("parity") or {}
    if parity:
        lines.append(
            "- parity ONNX vs PyTorch: "
            + ", ".join(f"{k} {_cell(v)}" for k, v in parity.items())
        )
    latency = edge.get("batch1-latency-p50-us") or {}
    if latency:
        lines.append(
            "- batch-1 latency, p50: "
            + ", ".join(f"{name} {us:.1f} µs" for name, us in latency.items())
        )
        lines.append(f"  ({_timing_sentence(edge.get('batch1-latency-measured'))})")
    return [*lines, ""]


def _timing_sentence(timing: dict[str, Any] | None) -> str:
    """Say how and where the batch-1 latency was measured: not on the device."""
    timing = timing or {}
    how = ", ".join(
        text
        for key, text in (
            ("engine", f"{timing.get('engine')}"),
            ("threads", f"{timing.get('threads')} thread"),
            ("warm-up-runs", f"{timing.get('warm-up-runs')} warm-up calls"),
            ("timed-runs", f"{timing.get('timed-runs')} timed calls"),
        )
        if key in timing
    )
    where = timing.get("measured-on", "the exporting machine")
    return (
        f"one example per call{', ' + how if how else ''}; measured on {where}, "
        "not on the device"
    )


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return "" if value is None else str(value)

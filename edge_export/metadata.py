"""Write and read fedge's metadata inside an ONNX file (``metadata_props``).

The model file carries everything a device needs to use it correctly and
everything an auditor needs to trust it: the architecture, the input contract,
the input encoding, class labels, where it came from and its DP guarantee. The
runtime reads these keys back (:class:`fedge.edge_export.runtime.EdgeMetadata`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx

# The keys are the runtime's: it reads what this module writes.
from fedge.edge_export.runtime import metadata as keys
from fedge.shared.errors import ModelError

BATCH_DIM = "batch"
PRODUCER_NAME = "fedge"


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def build_metadata(
    *,
    spec: Mapping[str, Any],
    preprocessing: Mapping[str, Any],
    input_name: str,
    input_shape: tuple[int, ...],
    output_name: str,
    provenance: Mapping[str, Any],
    privacy: Mapping[str, Any],
    quantization: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Return the ``metadata_props`` mapping for one exported model.

    A user's own model's identity (``spec["identity"]``: reference, SHA-256 of
    its source file, package version) gets a key of its own as well.

    Parameters
    ----------
    spec, preprocessing : mapping
        ``ModelSpec.to_dict()`` and ``Preprocessing.to_dict()``.
    input_name, output_name : str
        Graph input (encoded features) and output (logits) names.
    input_shape : tuple of int
        One encoded example's shape (no batch axis).
    provenance, privacy : mapping
        As in ``model.json``.
    quantization : mapping, optional
        ``{"method": "none"}`` for the float model (the default).
    """
    props = {
        keys.KEY_FORMAT: keys.METADATA_FORMAT,
        keys.KEY_MODEL_NAME: str(spec["name"]),
        keys.KEY_SPEC: _json(dict(spec)),
        keys.KEY_INPUT: _json(
            {
                "name": input_name,
                "shape": [BATCH_DIM, *(int(d) for d in input_shape)],
                "dtype": "float32",
            }
        ),
        keys.KEY_OUTPUT: _json(
            {
                "name": output_name,
                "shape": [BATCH_DIM, int(spec["num_classes"])],
                "dtype": "float32",
                "meaning": "logits; softmax gives class probabilities",
            }
        ),
        keys.KEY_PREPROCESSING: _json(dict(preprocessing)),
        keys.KEY_CLASS_LABELS: _json(list(preprocessing["class_names"])),
        keys.KEY_PROVENANCE: _json(dict(provenance)),
        keys.KEY_PRIVACY: _json(dict(privacy)),
        keys.KEY_QUANTIZATION: _json(dict(quantization or {"method": "none"})),
    }
    if spec.get("identity"):
        props[keys.KEY_MODEL_IDENTITY] = _json(dict(spec["identity"]))
    return props


def write_metadata(model: onnx.ModelProto, props: Mapping[str, str]) -> None:
    """Set ``props`` on ``model`` in place, replacing keys of the same name."""
    keep = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = PRODUCER_NAME


def read_metadata(model: onnx.ModelProto | str | Path) -> dict[str, str]:
    """Return ``metadata_props`` as a dict (loads the file without weights)."""
    source = "the ONNX model" if isinstance(model, onnx.ModelProto) else str(model)
    if not isinstance(model, onnx.ModelProto):
        try:
            model = onnx.load(str(model), load_external_data=False)
        except Exception as e:  # protobuf's DecodeError is not a stable type
            raise ModelError(f"{model} is not an ONNX file: {e}") from e
    props: dict[str, str] = {}
    for entry in model.metadata_props:
        # protobuf hands over bytes, not str, for a value that is not UTF-8.
        if not isinstance(entry.key, str) or not isinstance(entry.value, str):
            raise ModelError(
                f"{source}: metadata entry {entry.key!r} is not UTF-8 text: its bytes "
                "are corrupted; re-export the model or restore the file"
            )
        props[entry.key] = entry.value
    return props


def fedge_metadata(props: Mapping[str, str]) -> dict[str, str]:
    """Only fedge's keys."""
    return {k: v for k, v in props.items() if k.startswith("fedge.")}


def copy_metadata(
    source: onnx.ModelProto, target: onnx.ModelProto, **overrides: str
) -> None:
    """Copy fedge's metadata from ``source`` to ``target`` (quantisation drops it)."""
    props = fedge_metadata(read_metadata(source))
    props.update(overrides)
    write_metadata(target, props)


def strip_exporter_metadata(model: onnx.ModelProto) -> None:
    """Remove the exporter's per-node debug metadata, in place.

    torch's exporter annotates every node and value with FX names and Python
    stack traces. They hold file paths of the machine that exported the model
    (nothing a device should learn) and make up about a tenth of the file. The
    graph-level keys (the exported program's signature) are debug output too,
    about 800 bytes: a twentieth of a small model's file.
    """
    graph = model.graph
    kept = [p for p in graph.metadata_props if not p.key.startswith("pkg.torch")]
    del graph.metadata_props[:]
    graph.metadata_props.extend(kept)
    for item in (*graph.node, *graph.input, *graph.output, *graph.value_info):
        del item.metadata_props[:]
    for tensor in graph.initializer:
        del tensor.metadata_props[:]
    for key in [p.key for p in model.metadata_props if p.key.startswith("pkg.torch")]:
        props = [p for p in model.metadata_props if p.key != key]
        del model.metadata_props[:]
        model.metadata_props.extend(props)

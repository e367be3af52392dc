"""Run an exported fedge model on a device: ONNX Runtime and NumPy, nothing else.

This folder stands alone on purpose: a device copies it (or installs fedge with
``pip install -r requirements-edge.txt``) and needs neither torch nor the rest
of fedge, so its modules import one another relatively and nothing else of
fedge. pandas is imported only when the caller hands over a DataFrame or asks
to read CSV/Parquet and it is installed.

- :mod:`.encoding`: raw tables, images and series -> model inputs; training's
  ``Preprocessing.transform_features`` calls it too, so there is one encoder.
- :mod:`.metadata`: the fedge keys in an ONNX file, parsed.
- :mod:`.inputs`: reading input files and long recordings.
- :mod:`.verification`: a model's hash against its manifest, the signature.
- :mod:`.model`: :class:`EdgeModel`, the one class a device loop needs.

Examples
--------
A device loop, once the model has been exported with ``fedge export``::

    from fedge.edge_export.runtime import EdgeModel

    model = EdgeModel.load("runs/demo/model.int8.onnx")
    prediction = model.predict(raw_rows)  # array, DataFrame or column dict
    prediction.labels, prediction.probabilities

On a device the copied folder is imported as ``runtime``
(``from runtime import EdgeModel``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .encoding import transform_features
from .errors import EdgeError, InputError, ModelFileError, SignatureError
from .inputs import TIMESTAMP_COLUMNS, read_input, read_recording
from .metadata import (
    KEY_CLASS_LABELS,
    KEY_FORMAT,
    KEY_INPUT,
    KEY_MODEL_IDENTITY,
    KEY_MODEL_NAME,
    KEY_OUTPUT,
    KEY_PREPROCESSING,
    KEY_PRIVACY,
    KEY_PROVENANCE,
    KEY_QUANTIZATION,
    KEY_SPEC,
    LEGACY_PRIVACY_EPSILON_MAX,
    MANIFEST_FILE,
    METADATA_FORMAT,
    PRIVACY_EPSILON_MAX,
    REQUIRED_KEYS,
    SIGNATURE_FILE,
    EdgeMetadata,
)
from .verification import sha256_file, verify_signature

if TYPE_CHECKING:
    from .model import EdgeModel, Prediction, StreamPrediction, session_options

# These need onnxruntime, so they load on first use: training code imports the
# encoder from this package and must not pay for (or need) ONNX Runtime.
_MODEL_NAMES = ("EdgeModel", "Prediction", "StreamPrediction", "session_options")

__all__ = [
    "KEY_CLASS_LABELS",
    "KEY_FORMAT",
    "KEY_INPUT",
    "KEY_MODEL_IDENTITY",
    "KEY_MODEL_NAME",
    "KEY_OUTPUT",
    "KEY_PREPROCESSING",
    "KEY_PRIVACY",
    "KEY_PROVENANCE",
    "KEY_QUANTIZATION",
    "KEY_SPEC",
    "LEGACY_PRIVACY_EPSILON_MAX",
    "MANIFEST_FILE",
    "METADATA_FORMAT",
    "PRIVACY_EPSILON_MAX",
    "REQUIRED_KEYS",
    "SIGNATURE_FILE",
    "TIMESTAMP_COLUMNS",
    "EdgeError",
    "EdgeMetadata",
    "EdgeModel",
    "InputError",
    "ModelFileError",
    "Prediction",
    "SignatureError",
    "StreamPrediction",
    "read_input",
    "read_recording",
    "session_options",
    "sha256_file",
    "transform_features",
    "verify_signature",
]


def __getattr__(name: str) -> Any:
    """Load the ONNX Runtime part (:mod:`.model`) the first time it is asked for."""
    if name in _MODEL_NAMES:
        return getattr(importlib.import_module(".model", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

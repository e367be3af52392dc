"""What the exporter stores in an ONNX file and a run's manifest, as the device reads it.

``fedge.edge_export.metadata`` writes these ``metadata_props`` keys; this module
reads them back into :class:`EdgeMetadata`. The manifest's and signature's file
names are spelled here too: a device cannot import ``fedge.shared.run_folder``,
which owns them, and tests/shared/test_run_folder_contract.py checks they agree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ModelFileError

# Keys under ``ModelProto.metadata_props``; every value is a string (JSON for
# anything structured). edge_export.metadata writes them, this module reads them.
METADATA_FORMAT = "fedge-onnx/1"
KEY_FORMAT = "fedge.format"
KEY_MODEL_NAME = "fedge.model-name"
KEY_SPEC = "fedge.model-spec"
KEY_INPUT = "fedge.input"
KEY_OUTPUT = "fedge.output"
KEY_PREPROCESSING = "fedge.preprocessing"
KEY_CLASS_LABELS = "fedge.class-labels"
KEY_PROVENANCE = "fedge.provenance"
KEY_PRIVACY = "fedge.privacy"
KEY_QUANTIZATION = "fedge.quantization"
# Only for a user's own model (``MODULE:CALLABLE``): which code it is.
KEY_MODEL_IDENTITY = "fedge.model-identity"
REQUIRED_KEYS = (
    KEY_FORMAT,
    KEY_MODEL_NAME,
    KEY_SPEC,
    KEY_INPUT,
    KEY_OUTPUT,
    KEY_PREPROCESSING,
    KEY_CLASS_LABELS,
    KEY_PROVENANCE,
    KEY_PRIVACY,
    KEY_QUANTIZATION,
)
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"  # the manifest's signature (a Sigstore bundle)
# The privacy summary's largest per-node ε, and the name models exported before
# it was unified used for it (read, so those models keep working).
PRIVACY_EPSILON_MAX = "epsilon-max"
LEGACY_PRIVACY_EPSILON_MAX = "max-epsilon"


@dataclass(frozen=True)
class EdgeMetadata:
    """What the exporter stored in the ONNX file, parsed.

    Parameters
    ----------
    model_name : str
        Registry architecture (``"mlp"`` or ``"cnn"``).
    spec : dict
        The ``ModelSpec`` as a dict.
    input_name, input_dtype : str
        Graph input to feed, and its element type (``"float32"``).
    input_shape : tuple
        Shape with ``"batch"`` for the dynamic batch axis.
    output_name : str
        Graph output holding the logits.
    preprocessing : dict
        ``Preprocessing.to_dict()``: how raw inputs are encoded.
    class_labels : tuple of str
        Class names in logit order.
    provenance, privacy, quantization : dict
        Training run facts, DP guarantees, and how the weights were quantised.
    model_identity : dict or None
        A user's own model: its reference, the SHA-256 of its source file and
        its package version. None for fedge's built-in models.
    """

    model_name: str
    spec: dict[str, Any]
    input_name: str
    input_shape: tuple[Any, ...]
    input_dtype: str
    output_name: str
    preprocessing: dict[str, Any]
    class_labels: tuple[str, ...]
    provenance: dict[str, Any]
    privacy: dict[str, Any]
    quantization: dict[str, Any]
    model_identity: dict[str, Any] | None = None

    @classmethod
    def from_props(cls, props: Mapping[str, str], *, source: str) -> EdgeMetadata:
        """Parse ``metadata_props`` as a string mapping.

        Raises
        ------
        ModelFileError
            The fedge keys are missing, of another format version, or not JSON.
        """
        missing = [k for k in REQUIRED_KEYS if k not in props]
        if len(missing) == len(REQUIRED_KEYS):
            raise ModelFileError(
                f"{source} is an ONNX model without fedge metadata (expected "
                f"metadata_props keys {list(REQUIRED_KEYS)}, found "
                f"{sorted(props)}); export it with `fedge export RUN_DIR`"
            )
        if missing:
            raise ModelFileError(
                f"{source} has incomplete fedge metadata: missing {missing}"
            )
        if props[KEY_FORMAT] != METADATA_FORMAT:
            raise ModelFileError(
                f"{source} has fedge metadata format {props[KEY_FORMAT]!r}, "
                f"this runtime reads {METADATA_FORMAT!r}; update fedge's runtime"
            )
        parsed: dict[str, Any] = {}
        optional = [KEY_MODEL_IDENTITY] if KEY_MODEL_IDENTITY in props else []
        for key in (*REQUIRED_KEYS[2:], *optional):
            try:
                parsed[key] = json.loads(props[key])
            except json.JSONDecodeError as e:
                raise ModelFileError(
                    f"{source}: metadata {key!r} is not valid JSON ({e})"
                ) from e
        model_input, model_output = parsed[KEY_INPUT], parsed[KEY_OUTPUT]
        return cls(
            model_name=props[KEY_MODEL_NAME],
            spec=parsed[KEY_SPEC],
            input_name=model_input["name"],
            input_shape=tuple(model_input["shape"]),
            input_dtype=model_input["dtype"],
            output_name=model_output["name"],
            preprocessing=parsed[KEY_PREPROCESSING],
            class_labels=tuple(parsed[KEY_CLASS_LABELS]),
            provenance=parsed[KEY_PROVENANCE],
            privacy=_current_privacy_names(parsed[KEY_PRIVACY]),
            quantization=parsed[KEY_QUANTIZATION],
            model_identity=parsed.get(KEY_MODEL_IDENTITY),
        )


def _current_privacy_names(privacy: dict[str, Any]) -> dict[str, Any]:
    """Return the privacy summary with today's names (an old model's ε renamed)."""
    if LEGACY_PRIVACY_EPSILON_MAX not in privacy:
        return privacy
    renamed = dict(privacy)
    legacy = renamed.pop(LEGACY_PRIVACY_EPSILON_MAX)
    renamed.setdefault(PRIVACY_EPSILON_MAX, legacy)
    return renamed

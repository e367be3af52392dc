"""``manifest.json``: every artefact's hash and size, and the export's figures.

:func:`verify_run` re-hashes every listed file, cross-checks the metadata
inside the ONNX files against ``model.json`` and runs the embedded artefacts
against ``model.onnx``. It detects changed, truncated and missing files:
corruption. Someone who can rewrite both a model and the
manifest passes those checks; a signature over the manifest
(:mod:`fedge.edge_export.signing`, checked here when a public key is given) detects
that tampering.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedge.edge_export.embedded import (
    DEFAULT_TOLERANCE,
    SAME_FUNCTION_AS_ONNX,
    compare_same_function,
)
from fedge.edge_export.metadata import fedge_metadata, read_metadata
from fedge.edge_export.runtime import (
    KEY_PREPROCESSING,
    KEY_PRIVACY,
    KEY_PROVENANCE,
    KEY_QUANTIZATION,
    KEY_SPEC,
    SignatureError,
    sha256_file,
    verify_signature,
)
from fedge.shared.atomic_io import atomic_write_text
from fedge.shared.errors import ModelError
from fedge.shared.run_folder import (
    EXPORTED_FILES,
    MANIFEST_FILE,
    MODEL_INFO_FILE,
    ONNX_FP32_FILE,
    ONNX_INT8_FILE,
    SIGNATURE_FILE,
    PrivacySummary,
    read_model_info,
)

MANIFEST_FORMAT = "fedge-manifest/1"
# File name -> its role in the manifest.
ROLES = {exported.name: exported.role for exported in EXPORTED_FILES}


@dataclass
class Manifest:
    """The content of ``manifest.json``.

    Attributes
    ----------
    artefacts : dict
        File name -> ``{"role", "sha256", "size-bytes"}``.
    export : dict
        Opset, tolerance, tool versions.
    parity : dict
        :class:`~fedge.edge_export.onnx_export.ParityReport` as a dict.
    accuracy : dict
        Top-1 accuracy on the held-out split: PyTorch, ONNX fp32, ONNX int8.
    quantization : dict
        Both int8 candidates' accuracy and size, and which one was kept.
    data : dict
        Where the held-out and calibration examples came from.
    embedded : dict
        The embedded artefacts' checks against ``model.onnx``, every model
        file's size and batch-1 latency, and the budgets asked for.
    """

    artefacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    embedded: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    format: str = MANIFEST_FORMAT

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON dict, format first."""
        return {
            "format": self.format,
            "created": self.created,
            "artefacts": self.artefacts,
            "export": self.export,
            "parity": self.parity,
            "accuracy": self.accuracy,
            "quantization": self.quantization,
            "data": self.data,
            "embedded": self.embedded,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = MANIFEST_FILE) -> Manifest:
        """Rebuild from :meth:`to_dict` output.

        Raises
        ------
        ModelError
            Not a fedge manifest, or a format this version cannot read.
        """
        if not isinstance(d, dict) or d.get("format") != MANIFEST_FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ModelError(
                f"{source} is not a fedge manifest: format {got!r}, expected "
                f"{MANIFEST_FORMAT!r}"
            )
        artefacts = d.get("artefacts")
        if not isinstance(artefacts, dict):
            raise ModelError(f"{source} has no 'artefacts' table")
        return cls(
            artefacts=artefacts,
            export=d.get("export", {}),
            parity=d.get("parity", {}),
            accuracy=d.get("accuracy", {}),
            quantization=d.get("quantization", {}),
            data=d.get("data", {}),
            embedded=d.get("embedded", {}),
            created=d.get("created", ""),
        )


def describe_artefact(path: Path, role: str) -> dict[str, Any]:
    """Return the manifest entry for one file: role, SHA-256 and size."""
    return {
        "role": role,
        "sha256": sha256_file(path),
        "size-bytes": path.stat().st_size,
    }


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Write atomically: a reader sees the old manifest or the new one, whole."""
    atomic_write_text(path, json.dumps(manifest.to_dict(), indent=2) + "\n")


def read_manifest(run_dir: Path) -> Manifest:
    """Read ``run_dir/manifest.json``.

    Raises
    ------
    ModelError
        Missing, not JSON, or not a fedge manifest.
    """
    path = Path(run_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ModelError(
            f"no {MANIFEST_FILE} in {run_dir}; run `fedge export {run_dir}` first"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path} is not valid JSON (corrupted?): {e}") from e
    return Manifest.from_dict(data, source=str(path))


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_run`.

    Attributes
    ----------
    checked : list of str
        What was checked and found correct.
    problems : list of str
        Every mismatch found (empty when the run folder is intact).
    signature : str
        ``"verified"`` when a public key was given and the signature holds;
        ``"unsigned"`` when no key was given (the signature is not checked).
    """

    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    signature: str = "unsigned"

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


def _check_files(run_dir: Path, manifest: Manifest, report: VerifyReport) -> set[str]:
    """Re-hash every listed file; return the names of those intact."""
    intact = set()
    for name, entry in manifest.artefacts.items():
        path = run_dir / name
        if not path.is_file():
            report.problems.append(f"{name}: listed in the manifest but missing")
            continue
        size = path.stat().st_size
        if size != entry.get("size-bytes"):
            report.problems.append(
                f"{name}: size {size} bytes, manifest says {entry.get('size-bytes')}"
            )
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            report.problems.append(
                f"{name}: sha256 {digest}, manifest says {entry.get('sha256')} "
                "(the file was changed after export)"
            )
        elif size == entry.get("size-bytes"):
            report.checked.append(f"{name}: sha256 and size match")
            intact.add(name)
    return intact


def _check_outputs(
    run_dir: Path, manifest: Manifest, report: VerifyReport, intact: set[str]
) -> None:
    """Run the artefacts that compute model.onnx's function; compare their outputs.

    A hash only proves a file is the one the manifest lists; whoever rewrote
    both (no signature checked) could have changed a weight. Running each file
    catches that, unless model.onnx was changed the same way. Files already
    reported as changed or missing are not run again.
    """
    if ONNX_FP32_FILE not in intact:
        return
    names = [name for name in SAME_FUNCTION_AS_ONNX if name in intact]
    if not names:
        return
    tolerance = float(manifest.export.get("tolerance", DEFAULT_TOLERANCE))
    agree, disagree = compare_same_function(run_dir, names, tolerance=tolerance)
    report.checked += agree
    report.problems += disagree


def _check_metadata(run_dir: Path, manifest: Manifest, report: VerifyReport) -> None:
    """Cross-check the ONNX files' fedge metadata with model.json and each other."""
    try:
        model_info = read_model_info(run_dir)
    except (OSError, ModelError) as e:
        report.problems.append(
            f"{MODEL_INFO_FILE}: cannot read it to cross-check ({e})"
        )
        return
    # Privacy is compared as read, so a model exported before ε's name was
    # unified still matches its model.json.
    # JSON round trip: the metadata holds lists where the spec holds tuples.
    expected = {
        KEY_SPEC: json.loads(json.dumps(model_info.spec.to_dict())),
        KEY_PREPROCESSING: json.loads(json.dumps(model_info.preprocessing.to_dict())),
        KEY_PROVENANCE: model_info.provenance,
        KEY_PRIVACY: model_info.privacy,
    }
    reference: dict[str, str] | None = None
    for name in (ONNX_FP32_FILE, ONNX_INT8_FILE):
        if name not in manifest.artefacts or not (run_dir / name).is_file():
            continue
        try:
            props = fedge_metadata(read_metadata(run_dir / name))
        except ModelError as e:
            report.problems.append(f"{name}: {e}")
            continue
        if not props:
            report.problems.append(f"{name}: has no fedge metadata")
            continue
        bad = False
        for key, want in expected.items():
            try:
                got = json.loads(props.get(key, "null"))
            except json.JSONDecodeError:
                got = None
            if key == KEY_PRIVACY and isinstance(got, dict):
                got = PrivacySummary.from_dict(got)
            if got != want:
                report.problems.append(
                    f"{name}: metadata {key!r} differs from {MODEL_INFO_FILE}"
                )
                bad = True
        without_quant = {k: v for k, v in props.items() if k != KEY_QUANTIZATION}
        if reference is None:
            reference = without_quant
        elif without_quant != reference:
            report.problems.append(f"{name}: metadata differs from {ONNX_FP32_FILE}'s")
            bad = True
        if not bad:
            report.checked.append(f"{name}: metadata matches {MODEL_INFO_FILE}")


def verify_run(
    run_dir: str | Path, *, public_key: str | Path | None = None
) -> VerifyReport:
    """Re-check every hash and the ONNX files' metadata; run the embedded artefacts.

    ``model.ort``, ``model.fixed.onnx`` and ``model.optimized.onnx`` must give
    ``model.onnx``'s logits within the export's tolerance on a few inputs
    (:func:`fedge.edge_export.embedded.compare_same_function`).

    With ``public_key``, the manifest's signature must verify too (a missing
    or wrong signature is a problem); without it the signature is not checked.

    Returns
    -------
    VerifyReport
        ``report.ok`` is False if anything was changed, truncated or removed.

    Raises
    ------
    ModelError
        The manifest itself is missing or unreadable.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    report = VerifyReport()
    if public_key is not None:
        try:
            verify_signature(run_dir / MANIFEST_FILE, public_key)
        except SignatureError as e:
            report.problems.append(str(e))
            report.signature = "invalid"
        else:
            report.signature = "verified"
            report.checked.append(f"{SIGNATURE_FILE}: signed by {public_key}")
    if ONNX_FP32_FILE not in manifest.artefacts:
        report.problems.append(f"the manifest does not list {ONNX_FP32_FILE}")
    intact = _check_files(run_dir, manifest, report)
    _check_metadata(run_dir, manifest, report)
    _check_outputs(run_dir, manifest, report, intact)
    return report

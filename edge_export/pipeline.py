"""``export_run``: a finished run's model, checked, for devices.

The server and ``fedge export`` call it through
:func:`fedge.reports.model_card.export_run_with_card`, which adds the card.

All artefacts are built in a temporary folder inside the run folder and moved
into place only once every check has passed, so a failed export leaves no
half-written file (and a previous, consistent export stays as it was).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from fedge.edge_export.embedded import (
    DEFAULT_TOLERANCE,
    batch1_latency_us,
    check_budgets,
    compare,
    fixed_batch_one,
    latency_conditions,
    optimize_offline,
    to_ort_format,
)
from fedge.edge_export.manifest import (
    ROLES,
    Manifest,
    describe_artefact,
    write_manifest,
)
from fedge.edge_export.metadata import build_metadata, copy_metadata, write_metadata
from fedge.edge_export.onnx_export import (
    INPUT_NAME,
    OPSET,
    OUTPUT_NAME,
    check_onnx,
    check_parity,
    export_onnx,
    onnx_logits,
    torch_logits,
)
from fedge.edge_export.onnx_size import drop_runtime_unused
from fedge.edge_export.quantize import DYNAMIC, QUANT_METHODS, STATIC, quantize_int8
from fedge.edge_export.run_inputs import (
    RunInputs,
    calibration_data,
    held_out_data,
    load_run_inputs,
)
from fedge.edge_export.runtime import KEY_QUANTIZATION
from fedge.edge_export.signing import sign_manifest
from fedge.shared.errors import ConfigError, ModelError
from fedge.shared.run_folder import (
    BATCH1_LATENCY,
    BATCH1_TIMING,
    EXPORTED_FILES,
    FAILED,
    MANIFEST_FILE,
    MODEL_INFO_FILE,
    ONNX_FIXED_FILE,
    ONNX_FP32_FILE,
    ONNX_INT8_FILE,
    ONNX_OPTIMIZED_FILE,
    ORT_FILE,
    ORT_OPERATORS_FILE,
    SIGNATURE_FILE,
    STATUS_FILE,
    read_status,
)
from fedge.shared.versions import package_versions

logger = logging.getLogger(__name__)

QUANTIZE_CHOICES = ("auto", *QUANT_METHODS, "none")
# An int8 model is kept only if it loses at most this many accuracy points.
MAX_INT8_DROP_POINTS = 1.0
# Static QDQ is preferred: activations are int8 too, so batched inference runs
# on integer kernels; dynamic recomputes activation ranges on every call.
INT8_PREFERENCE = (STATIC, DYNAMIC)
CALIBRATION_SIZE = 256
# Writes further files from a checked export (run folder, manifest, ONNX model).
WriteArtefacts = Callable[[Path, Manifest, Path], Sequence[Path]]
_TOOLS = ("fedge", "torch", "onnx", "onnxscript", "onnxruntime")


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(logits.argmax(axis=1) == y))


def _metadata_props(run: RunInputs) -> dict[str, str]:
    return build_metadata(
        spec=run.spec.to_dict(),
        preprocessing=run.preprocessing.to_dict(),
        input_name=INPUT_NAME,
        input_shape=run.input_shape,
        output_name=OUTPUT_NAME,
        provenance=run.model_info.provenance,
        privacy=run.model_info.privacy.to_dict(),
    )


def _save(proto: onnx.ModelProto, path: Path) -> None:
    # Float and int8 files get the same clean-up, so their size ratio is
    # quantisation's alone.
    drop_runtime_unused(proto)
    # One self-contained file: weights embedded, never an external-data file.
    onnx.save_model(proto, str(path), save_as_external_data=False)


def _quantize_candidates(
    methods: tuple[str, ...],
    fp32_path: Path,
    tmp: Path,
    run: RunInputs,
    fp32_accuracy: float,
    test_x: np.ndarray,
    test_y: np.ndarray,
    calibration: np.ndarray,
) -> dict[str, dict[str, Any]]:
    """Build each int8 candidate; return its accuracy, size and settings."""
    fp32_proto = onnx.load(str(fp32_path))
    results: dict[str, dict[str, Any]] = {}
    for method in methods:
        path = tmp / f"model.{method}.onnx"
        settings = quantize_int8(
            method, fp32_path, path, calibration=calibration, input_name=INPUT_NAME
        )
        # ORT's quantisers drop metadata_props; the device needs them.
        proto = onnx.load(str(path))
        copy_metadata(fp32_proto, proto, **{KEY_QUANTIZATION: _json(settings)})
        onnx.checker.check_model(proto)
        _save(proto, path)
        accuracy = _accuracy(onnx_logits(path, test_x), test_y)
        drop = 100.0 * (fp32_accuracy - accuracy)
        results[method] = {
            "path": path,
            "accuracy": accuracy,
            "drop-points": drop,
            "within-bound": drop <= MAX_INT8_DROP_POINTS,
            "size-bytes": path.stat().st_size,
            "settings": settings,
        }
        logger.info("int8 %s: accuracy %.4f (drop %.2f points)", method, accuracy, drop)
    return results


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _choose(
    quantize: str, candidates: dict[str, dict[str, Any]]
) -> tuple[str | None, str]:
    """Pick the int8 artefact to ship, with the reason."""
    if quantize in QUANT_METHODS:
        c = candidates[quantize]
        if not c["within-bound"]:
            logger.warning(
                "int8 (%s) loses %.2f accuracy points (bound %.1f); kept because it "
                "was asked for explicitly",
                quantize,
                c["drop-points"],
                MAX_INT8_DROP_POINTS,
            )
        return quantize, "requested explicitly"
    for method in INT8_PREFERENCE:
        if method in candidates and candidates[method]["within-bound"]:
            return method, (
                f"first of {list(INT8_PREFERENCE)} within {MAX_INT8_DROP_POINTS} "
                "accuracy point of fp32"
            )
    logger.warning(
        "No int8 model kept: every method loses more than %.1f accuracy points (%s)",
        MAX_INT8_DROP_POINTS,
        {m: round(c["drop-points"], 2) for m, c in candidates.items()},
    )
    return None, f"no method within {MAX_INT8_DROP_POINTS} accuracy point of fp32"


# Files the embedded step may write, in publishing order.
EMBEDDED_FILES = tuple(f.name for f in EXPORTED_FILES if f.embedded)
# Model files a device may run, for the latency and size figures and budgets.
MODEL_FILES = tuple(f.name for f in EXPORTED_FILES if f.device_model)
# Files the run wrote that the manifest covers too.
RUN_FILES = tuple(f.name for f in EXPORTED_FILES if f.written_by_run)


def _embedded_artefacts(
    tmp: Path, reference: np.ndarray, x: np.ndarray, tolerance: float
) -> dict[str, Any]:
    """Build and check the ORT-format, fixed-shape and optimised artefacts in ``tmp``."""
    fp32 = tmp / ONNX_FP32_FILE
    checks: dict[str, Any] = {}
    converted, operators = to_ort_format(fp32, tmp)
    os.replace(converted, tmp / ORT_FILE)
    os.replace(operators, tmp / ORT_OPERATORS_FILE)
    shutil.rmtree(converted.parent, ignore_errors=True)
    checks[ORT_FILE] = compare(
        tmp / ORT_FILE, reference, x, tolerance=tolerance
    ).to_dict()
    checks[ORT_OPERATORS_FILE] = {
        "operators": [
            line
            for line in (tmp / ORT_OPERATORS_FILE).read_text().splitlines()
            if line and not line.startswith("#")
        ]
    }
    usability = fixed_batch_one(fp32, tmp / ONNX_FIXED_FILE, INPUT_NAME)
    checks[ONNX_FIXED_FILE] = {
        **compare(
            tmp / ONNX_FIXED_FILE, reference, x, tolerance=tolerance, batch=1
        ).to_dict(),
        "mobile-usability": usability,
    }
    optimize_offline(fp32, tmp / ONNX_OPTIMIZED_FILE)
    optimized = compare(tmp / ONNX_OPTIMIZED_FILE, reference, x, tolerance=tolerance)
    checks[ONNX_OPTIMIZED_FILE] = optimized.to_dict()
    return checks


def _measure(tmp: Path, example: np.ndarray) -> dict[str, dict[str, float]]:
    """Size and batch-1 one-thread latency of every model file in ``tmp``."""
    figures = {}
    for name in MODEL_FILES:
        path = tmp / name
        if path.is_file():
            figures[name] = {
                "size-kib": path.stat().st_size / 1024,
                **batch1_latency_us(path, example),
            }
    return figures


def export_run(
    run_dir: str | Path,
    *,
    quantize: str = "auto",
    tolerance: float = DEFAULT_TOLERANCE,
    calibration_size: int = CALIBRATION_SIZE,
    opset: int = OPSET,
    sign_key: str | Path | None = None,
    max_size_kib: float | None = None,
    max_latency_us: float | None = None,
    write_artefacts: WriteArtefacts | None = None,
) -> Manifest:
    """Export a finished run's model for devices and write ``manifest.json``.

    Writes ``model.onnx`` (fp32, metadata inside), ``model.int8.onnx`` (unless
    no int8 model keeps accuracy, or ``quantize="none"``) and ``manifest.json``
    into ``run_dir``.

    Parameters
    ----------
    run_dir : path-like
        A run folder holding ``model.pt``, ``model.json`` and ``config.json``.
    quantize : {"auto", "static-qdq", "dynamic", "none"}, default "auto"
        ``auto`` builds both int8 variants and keeps static QDQ if it stays
        within :data:`MAX_INT8_DROP_POINTS` of fp32 accuracy, else dynamic if
        that does, else none. Both are measured and reported either way.
    tolerance : float, default 1e-4
        Largest allowed absolute logit difference between ONNX Runtime and
        PyTorch eager on the held-out split.
    calibration_size : int, default 256
        Training-side examples used to calibrate static quantisation.
    opset : int, default :data:`~fedge.edge_export.onnx_export.OPSET`
    sign_key : path-like, optional
        An elliptic-curve private key (PEM): sign the manifest, which hashes
        every artefact, into ``manifest.sig``
        (:func:`fedge.edge_export.signing.sign_manifest`). None leaves it unsigned.
    max_size_kib, max_latency_us : float, optional
        Budgets: at least one model file must be this small and this fast
        (batch-1 p50 on one thread, measured on this machine), else nothing is
        written and the error says by how much and which file came closest.
    write_artefacts : callable, optional
        Called with the run folder, the manifest so far and the checked
        ``model.onnx`` before anything is published; returns the files it
        wrote into the run folder, which the manifest then lists (the model
        card: :func:`fedge.reports.model_card.export_run_with_card`).

    Returns
    -------
    Manifest

    Raises
    ------
    ModelError
        Bad run folder, export or checker failure, parity above tolerance, or
        no model file within the budgets. Nothing is written in that case.
    """
    if quantize not in QUANTIZE_CHOICES:
        raise ModelError(
            f"quantize must be one of {list(QUANTIZE_CHOICES)}, got {quantize!r}"
        )
    if not tolerance > 0:
        raise ModelError(f"tolerance must be > 0, got {tolerance}")
    run_dir = Path(run_dir)
    if sign_key is not None and not Path(sign_key).is_file():
        raise ConfigError(f"signing key {sign_key} not found; nothing was exported")
    refuse_failed_run(run_dir)
    run = load_run_inputs(run_dir)
    test = held_out_data(run)
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=".export-"))
    try:
        proto = export_onnx(run.model, run.input_shape, opset=opset)
        check_onnx(proto, input_shape=run.input_shape, num_classes=run.spec.num_classes)
        write_metadata(proto, _metadata_props(run))
        fp32_path = tmp / ONNX_FP32_FILE
        _save(proto, fp32_path)
        parity = check_parity(run.model, fp32_path, test.x, tolerance=tolerance)
        torch_accuracy = _accuracy(torch_logits(run.model, test.x), test.y)
        fp32_accuracy = _accuracy(onnx_logits(fp32_path, test.x), test.y)

        methods = QUANT_METHODS if quantize in ("auto", *QUANT_METHODS) else ()
        calibration: np.ndarray | None = None
        calibration_note = ""
        candidates: dict[str, dict[str, Any]] = {}
        if methods:
            calibration, calibration_note = calibration_data(run, size=calibration_size)
            candidates = _quantize_candidates(
                methods, fp32_path, tmp, run, fp32_accuracy, test.x, test.y, calibration
            )
        chosen, reason = (
            _choose(quantize, candidates) if candidates else (None, "quantize='none'")
        )
        if chosen is not None:
            os.replace(candidates[chosen]["path"], tmp / ONNX_INT8_FILE)

        reference = onnx_logits(fp32_path, test.x)
        embedded = _embedded_artefacts(tmp, reference, test.x, tolerance)
        figures = _measure(tmp, test.x[0])
        faster = (
            figures[ONNX_OPTIMIZED_FILE]["p50-us"] < figures[ONNX_FP32_FILE]["p50-us"]
        )
        embedded[ONNX_OPTIMIZED_FILE]["kept"] = faster
        if not faster:  # ONNX Runtime optimises model.onnx as well when loading it
            (tmp / ONNX_OPTIMIZED_FILE).unlink()
            del figures[ONNX_OPTIMIZED_FILE]
        within = check_budgets(
            figures, max_size_kib=max_size_kib, max_latency_us=max_latency_us
        )

        manifest = _build_manifest(
            run,
            tmp,
            parity.to_dict(),
            torch_accuracy,
            fp32_accuracy,
            test,
            candidates,
            chosen,
            reason,
            calibration_note,
            calibration,
            tolerance,
            opset,
        )
        manifest.embedded = {
            "checks": embedded,
            BATCH1_LATENCY: figures,
            BATCH1_TIMING: latency_conditions(),
            "budgets": {
                "max-size-kib": max_size_kib,
                "max-latency-us": max_latency_us,
                "within": within,
            },
        }
        for name in EMBEDDED_FILES:
            if (tmp / name).is_file():
                manifest.artefacts[name] = describe_artefact(tmp / name, ROLES[name])
        if write_artefacts is not None:
            _add_artefacts(write_artefacts, run_dir, manifest, tmp / ONNX_FP32_FILE)
        _publish(run_dir, tmp, chosen is not None, manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if sign_key is not None:
        sign_manifest(run_dir, sign_key)
    return manifest


def refuse_failed_run(run_dir: Path) -> None:
    """Refuse a folder whose run failed before it saved a model.

    Such a run (e.g. one in which no round aggregated an update) has no
    trained model; its ``status.json`` says why, which is what the user needs
    rather than a missing ``model.json``. A run that failed after saving its
    model (its export at the end failed, say) may still be exported.

    Raises
    ------
    ModelError
        ``status.json`` reads ``failed`` and there is no ``model.json``.
    """
    status = read_status(run_dir)
    if status.get("state") != FAILED or (run_dir / MODEL_INFO_FILE).is_file():
        return
    # One line, whatever the reason's own layout.
    reason = " ".join(str(status.get("message", "")).split())
    reason = reason or f"see {run_dir / STATUS_FILE}"
    raise ModelError(
        f"{run_dir} has no trained model to export: its run failed ({reason}); "
        "nothing was exported"
    )


def _build_manifest(
    run: RunInputs,
    tmp: Path,
    parity: dict[str, Any],
    torch_accuracy: float,
    fp32_accuracy: float,
    test: Any,
    candidates: dict[str, dict[str, Any]],
    chosen: str | None,
    reason: str,
    calibration_note: str,
    calibration: np.ndarray | None,
    tolerance: float,
    opset: int,
) -> Manifest:
    artefacts = {
        ONNX_FP32_FILE: describe_artefact(tmp / ONNX_FP32_FILE, ROLES[ONNX_FP32_FILE])
    }
    if chosen is not None:
        artefacts[ONNX_INT8_FILE] = describe_artefact(
            tmp / ONNX_INT8_FILE, ROLES[ONNX_INT8_FILE]
        )
    for name in RUN_FILES:
        if (run.run_dir / name).is_file():
            artefacts[name] = describe_artefact(run.run_dir / name, ROLES[name])
    fp32_size = artefacts[ONNX_FP32_FILE]["size-bytes"]
    accuracy: dict[str, Any] = {
        "split": test.source,
        "num-examples": len(test),
        "pytorch": torch_accuracy,
        "onnx-fp32": fp32_accuracy,
        "onnx-int8": candidates[chosen]["accuracy"] if chosen else None,
    }
    return Manifest(
        artefacts=artefacts,
        export={
            "opset": opset,
            "input-name": INPUT_NAME,
            "output-name": OUTPUT_NAME,
            "input-shape": ["batch", *run.input_shape],
            "tolerance": tolerance,
            "versions": package_versions(_TOOLS),
        },
        parity=parity,
        accuracy=accuracy,
        quantization={
            "chosen": chosen,
            "reason": reason,
            "max-drop-points": MAX_INT8_DROP_POINTS,
            "fp32-size-bytes": fp32_size,
            "candidates": {
                method: {
                    "accuracy": c["accuracy"],
                    "drop-points": c["drop-points"],
                    "within-bound": c["within-bound"],
                    "size-bytes": c["size-bytes"],
                    "size-ratio": c["size-bytes"] / fp32_size,
                    "settings": c["settings"],
                }
                for method, c in candidates.items()
            },
        },
        data={
            "held-out": test.source,
            "calibration": calibration_note or None,
            "calibration-examples": 0 if calibration is None else len(calibration),
        },
    )


def _add_artefacts(
    write_artefacts: WriteArtefacts, run_dir: Path, manifest: Manifest, onnx_path: Path
) -> None:
    """Let the caller write its files from the checked export; list them too.

    They are written before the export is published and hashed into the
    manifest, so ``fedge verify`` covers them.
    """
    for path in write_artefacts(run_dir, manifest, onnx_path):
        manifest.artefacts[path.name] = describe_artefact(path, ROLES[path.name])


def _publish(run_dir: Path, tmp: Path, has_int8: bool, manifest: Manifest) -> None:
    """Move the checked artefacts into the run folder, manifest last.

    The old manifest goes first, so an interrupted publish leaves no manifest
    that vouches for files it does not describe (``fedge verify`` then says so).
    """
    (run_dir / MANIFEST_FILE).unlink(missing_ok=True)
    (run_dir / SIGNATURE_FILE).unlink(missing_ok=True)  # signed the old manifest
    os.replace(tmp / ONNX_FP32_FILE, run_dir / ONNX_FP32_FILE)
    for name in EMBEDDED_FILES:
        if (tmp / name).is_file():
            os.replace(tmp / name, run_dir / name)
        else:  # stale from an earlier export
            (run_dir / name).unlink(missing_ok=True)
    if has_int8:
        os.replace(tmp / ONNX_INT8_FILE, run_dir / ONNX_INT8_FILE)
    else:
        (run_dir / ONNX_INT8_FILE).unlink(
            missing_ok=True
        )  # stale from an earlier export
    write_manifest(run_dir / MANIFEST_FILE, manifest)

"""Post-training int8 quantisation with ONNX Runtime's tools.

Two methods, both measured on every export (:mod:`fedge.edge_export.pipeline` keeps
the one that holds accuracy):

``static-qdq``
    Weights *and* activations int8, in QDQ form (QuantizeLinear /
    DequantizeLinear pairs that ONNX Runtime fuses into integer kernels),
    activation ranges calibrated (min/max) on a sample of training-side data.
    Settings, each measured on the digits CNN (accuracy, size, latency):

    - only Conv, Gemm, Relu and MaxPool are quantised. The GroupNorm
      arithmetic (InstanceNormalization, Mul, Add) stays float: quantising it
      adds six Q/DQ pairs that cost latency and bytes and gain nothing.
    - Gemm outputs stay float, so the logits (and the probabilities a device
      reports) are not rounded to 256 levels.
    - weights per tensor and biases float: per-channel scales and int32 bias
      scales cost more bytes than they return in accuracy on layers this
      small (same digits accuracy either way, 3% smaller file).
``dynamic``
    Weights int8, activation ranges computed at run time on every call. Needs
    no calibration data, but every call pays for the range computation and the
    extra quantise ops, so it is slow for small batches.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from fedge.shared.errors import ModelError

STATIC = "static-qdq"
DYNAMIC = "dynamic"
QUANT_METHODS = (STATIC, DYNAMIC)
CALIBRATION_BATCH = 32
STATIC_OP_TYPES = ("Conv", "Gemm", "Relu", "MaxPool")


class ArrayCalibrationReader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no type information
    """Feed calibration batches from an in-memory array of encoded inputs."""

    def __init__(
        self, x: np.ndarray, input_name: str, batch_size: int = CALIBRATION_BATCH
    ):
        self._batches: Iterator[dict[str, np.ndarray]] = iter(
            {input_name: np.ascontiguousarray(x[s : s + batch_size], dtype=np.float32)}
            for s in range(0, len(x), batch_size)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        """Next batch, or None when exhausted (ORT's reader protocol)."""
        return next(self._batches, None)


def quantize_dynamic_int8(src: Path, dst: Path) -> dict[str, Any]:
    """Dynamic int8: weights quantised offline, activations at run time.

    Returns
    -------
    dict
        The settings, for the model's ``fedge.quantization`` metadata.
    """
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return {"method": DYNAMIC, "weights": "int8 per tensor", "activations": "dynamic"}


def quantize_static_int8(
    src: Path, dst: Path, calibration: np.ndarray, *, input_name: str
) -> dict[str, Any]:
    """Quantize to static int8 in QDQ form, calibrated on ``calibration`` (encoded inputs).

    The float model is first run through ORT's ``quant_pre_process`` (shape
    inference and graph clean-up) as its documentation recommends.

    Raises
    ------
    ModelError
        No calibration examples.
    """
    if len(calibration) == 0:
        raise ModelError("static quantisation needs calibration examples, got 0")
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=False)
        quantize_static(
            str(prepared),
            str(dst),
            ArrayCalibrationReader(calibration, input_name),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=False,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=list(STATIC_OP_TYPES),
            extra_options={
                "QuantizeBias": False,
                "OpTypesToExcludeOutputQuantization": ["Gemm"],
            },
        )
    return {
        "method": STATIC,
        "weights": "int8 per tensor (biases float)",
        "activations": "int8, min/max calibrated; logits float",
        "op-types": list(STATIC_OP_TYPES),
        "format": "QDQ",
        "calibration-examples": len(calibration),
    }


def quantize_int8(
    method: str,
    src: Path,
    dst: Path,
    *,
    calibration: np.ndarray,
    input_name: str,
) -> dict[str, Any]:
    """Quantise with ``method`` (one of :data:`QUANT_METHODS`).

    Raises
    ------
    ModelError
        Unknown method.
    """
    if method == STATIC:
        return quantize_static_int8(src, dst, calibration, input_name=input_name)
    if method == DYNAMIC:
        return quantize_dynamic_int8(src, dst)
    raise ModelError(
        f"unknown quantisation method {method!r}; expected one of {list(QUANT_METHODS)}"
    )

"""torch → ONNX: export one self-contained file, check it, and prove parity.

Opset: :data:`OPSET` = 18, chosen on purpose. torch's dynamo exporter
(``torch.onnx.export(dynamo=True)``) builds graphs from onnxscript's torchlib,
which is written against opset 18, so at 18 no version-converter pass rewrites
the graph afterwards (torch 2.13's default, 20, adds one). Opset 18 runs on
ONNX Runtime 1.14 and newer, including its mobile builds, which is the widest
device reach this project needs, and ONNX Runtime's quantisation tools handle
it fully. Nothing in fedge's models (Conv, GroupNorm as InstanceNormalization,
Gemm, ReLU/Tanh, MaxPool) needs a newer operator. At opset 21 the exporter
emits a single GroupNormalization op, which ONNX Runtime 1.32 runs slower
(measured on the digits CNN, batch 1: 19.5 µs against 13.7 µs at opset 18).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from fedge.edge_export.embedded import DEFAULT_TOLERANCE
from fedge.edge_export.metadata import strip_exporter_metadata
from fedge.edge_export.runtime import session_options
from fedge.shared.errors import ModelError
from fedge.shared.models import for_export

logger = logging.getLogger(__name__)

OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# Parity is computed in chunks so a large test split does not spike memory.
_PARITY_BATCH = 512
# Steps a recurrent model is traced with (see :func:`_trace_shape`).
RECURRENT_TRACE_STEPS = 8


def export_onnx(
    model: nn.Module, input_shape: tuple[int, ...], *, opset: int = OPSET
) -> onnx.ModelProto:
    """Export ``model`` (eval mode) to an in-memory ONNX model with a dynamic batch.

    Parameters
    ----------
    model : nn.Module
        A registry model.
    input_shape : tuple of int
        One encoded example's shape (no batch axis).
    opset : int, default :data:`OPSET`

    Returns
    -------
    onnx.ModelProto
        Weights embedded (no external data); exporter debug metadata removed.

    Raises
    ------
    ModelError
        The exporter failed.
    """
    # The GRU trains as Opacus's DPGRU; nn.GRU, same weights, exports as one op.
    model = for_export(model).eval()
    traced_shape = _trace_shape(model, input_shape)
    # Batch 2 as the example: a size-1 example lets export specialise the axis.
    example = torch.zeros((2, *traced_shape), dtype=torch.float32)
    batch = torch.export.Dim("batch")
    # The exporter prints progress on stdout and warns about optional torchvision
    # ops it cannot register; neither concerns these models, so keep both quiet.
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            # torch's own FutureWarnings about its internals, nothing to act on.
            warnings.simplefilter("ignore", FutureWarning)
            # nn.GRU re-assigns its flat weight list while being traced; the
            # weights are parameters all the same, and export embeds them.
            warnings.filterwarnings(
                "ignore", message=r"The tensor attributes self\.rnn"
            )
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                external_data=False,
                optimize=True,
                verbose=False,
            )
    except Exception as e:  # torch.export raises many unrelated types
        operator = unsupported_operator(e)
        if operator is not None:
            raise ModelError(
                f"ONNX cannot express operator {operator[0]} of the "
                f"{type(model).__name__} model at opset {opset} ({operator[1]}); "
                "nothing was exported and model.pt is unchanged: replace that "
                "operation in the model's forward to export it"
            ) from e
        raise ModelError(
            f"torch.onnx.export failed for a {type(model).__name__} with input "
            f"shape {input_shape} at opset {opset}: {e}"
        ) from e
    finally:
        exporter_log.setLevel(level)
    if program is None:  # only the legacy exporter returns None
        raise ModelError("torch.onnx.export returned no program")
    proto: onnx.ModelProto = program.model_proto
    strip_exporter_metadata(proto)
    if traced_shape != input_shape:
        _state_input_shape(proto, input_shape)
    return proto


# torch's exporter names the node it could not translate, and why, in its text.
_FAILED_NODE = re.compile(r"target=torch\.ops\.(\w+\.\w+)")
_SUMMARY = re.compile(r"<class '[\w.]+'>: ([^\n]+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def unsupported_operator(error: BaseException) -> tuple[str, str] | None:
    """Return the operator torch's ONNX exporter could not translate, and why.

    ``("aten._linalg_svd", "No ONNX function found for ...")`` from the
    exporter's error text, or None when the error names no operator (then
    the failure is something else, reported as it is).
    """
    text = _ANSI.sub("", str(error))
    node = _FAILED_NODE.search(text)
    if node is None:
        return None
    summary = _SUMMARY.search(text)
    reason = summary.group(1).strip() if summary else "no ONNX translation"
    return node.group(1), reason


def _trace_shape(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Return the example shape to trace ``model`` with: shorter for RNNs.

    torch.export works out a recurrent layer's output shapes by running its
    step-by-step decomposition on fake tensors, so tracing costs time per step
    (basic-motions' 100 steps: 28 s of CPU, against 4.5 s for 8 steps; 60-85 s
    of wall time on a loaded 2-core machine). The ONNX ``GRU``/``LSTM`` operator it exports to
    takes any number of steps, so a recurrent model is traced with
    :data:`RECURRENT_TRACE_STEPS` steps and then given its real input shape
    (:func:`_state_input_shape`). fedge's GRU reads only the last hidden
    state, so nothing in its graph depends on the length; the export's parity
    check runs the file on full-length held-out series against PyTorch, which
    would refuse a graph that kept the traced length anywhere.
    """
    recurrent = any(isinstance(m, nn.RNNBase) for m in model.modules())
    if recurrent and len(input_shape) == 2 and input_shape[1] > RECURRENT_TRACE_STEPS:
        return (input_shape[0], RECURRENT_TRACE_STEPS)
    return input_shape


def _state_input_shape(proto: onnx.ModelProto, input_shape: tuple[int, ...]) -> None:
    """Give the graph input its real per-example shape; drop traced value shapes."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    for dim, size in zip(dims[1:], input_shape, strict=True):
        dim.Clear()
        dim.dim_value = size
    # Intermediate shapes recorded at the traced length would contradict it.
    proto.graph.ClearField("value_info")


def check_onnx(
    proto: onnx.ModelProto, *, input_shape: tuple[int, ...], num_classes: int
) -> onnx.ModelProto:
    """Run the ONNX checker and strict shape inference; check the I/O contract.

    Returns
    -------
    onnx.ModelProto
        The model with inferred shapes (``value_info``) filled in.

    Raises
    ------
    ModelError
        The checker or shape inference fails, or the input/output shapes are
        not ``(batch, *input_shape)`` / ``(batch, num_classes)`` with a symbolic
        batch axis.
    """
    try:
        onnx.checker.check_model(proto, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(
            proto, check_type=True, strict_mode=True, data_prop=True
        )
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ModelError(f"exported ONNX model fails the ONNX checker: {e}") from e
    expected = {
        INPUT_NAME: ["batch-symbol", *input_shape],
        OUTPUT_NAME: ["batch-symbol", num_classes],
    }
    for value in (*inferred.graph.input, *inferred.graph.output):
        if value.name not in expected:
            continue
        dims = value.type.tensor_type.shape.dim
        got = [d.dim_param or d.dim_value for d in dims]
        want = expected.pop(value.name)
        batch_ok = bool(dims) and bool(dims[0].dim_param)
        if not batch_ok or [int(g) for g in got[1:]] != list(want[1:]):
            raise ModelError(
                f"exported {value.name!r} has shape {got}, expected a symbolic "
                f"batch axis then {list(want[1:])}"
            )
    if expected:
        raise ModelError(f"exported model lacks graph input/output {sorted(expected)}")
    return inferred


@dataclass(frozen=True)
class ParityReport:
    """How closely ONNX Runtime reproduces PyTorch eager on held-out inputs.

    Attributes
    ----------
    max_abs_diff : float
        Largest absolute difference between logits.
    top1_agreement : float
        Share of examples whose arg-max class agrees.
    num_examples : int
    tolerance : float
    passed : bool
        ``max_abs_diff <= tolerance``.
    """

    max_abs_diff: float
    top1_agreement: float
    num_examples: int
    tolerance: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the manifest (kebab-case keys)."""
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}


def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """PyTorch eager logits for encoded inputs, in chunks."""
    outs = []
    with torch.inference_mode():
        for start in range(0, len(x), _PARITY_BATCH):
            chunk = torch.from_numpy(
                np.ascontiguousarray(x[start : start + _PARITY_BATCH])
            )
            outs.append(model(chunk).numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), dtype=np.float32)


def onnx_logits(path: str | Path, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime (CPU, 1 thread) logits for encoded inputs, in chunks."""
    session = ort.InferenceSession(
        str(path), session_options(1), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    outs = [
        session.run(None, {name: np.ascontiguousarray(x[s : s + _PARITY_BATCH])})[0]
        for s in range(0, len(x), _PARITY_BATCH)
    ]
    return np.concatenate(outs)


def check_parity(
    model: nn.Module,
    onnx_path: str | Path,
    x: np.ndarray,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ParityReport:
    """Compare ONNX Runtime with PyTorch eager on ``x``; raise above ``tolerance``.

    Raises
    ------
    ModelError
        ``max_abs_diff > tolerance`` (the message gives both figures).
    """
    if len(x) == 0:
        raise ModelError("parity check needs at least one held-out example, got 0")
    reference = torch_logits(model.eval(), x)
    candidate = onnx_logits(onnx_path, x)
    diff = float(np.max(np.abs(reference - candidate)))
    agree = float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))
    report = ParityReport(
        max_abs_diff=diff,
        top1_agreement=agree,
        num_examples=len(x),
        tolerance=tolerance,
        passed=diff <= tolerance,
    )
    if not report.passed:
        raise ModelError(
            f"ONNX export parity failed: max |logit difference| vs PyTorch eager "
            f"is {diff:.3g} on {len(x)} held-out examples, tolerance {tolerance:g} "
            f"(top-1 agreement {agree:.2%}). No artefact was written."
        )
    logger.info("ONNX parity: max abs diff %.3g, top-1 agreement %.4f", diff, agree)
    return report

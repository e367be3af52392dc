"""Artefacts for embedded runtimes, each checked against ``model.onnx`` before use.

- ``model.ort`` + ``required_operators.config``: ONNX Runtime's ORT format
  (``onnxruntime.tools.convert_onnx_models_to_ort``), which ONNX Runtime's
  minimal builds load, and the operator list such a build is compiled with.
- ``model.fixed.onnx``: the input's batch axis fixed to 1
  (``onnxruntime.tools.onnx_model_utils.make_input_shape_fixed``, the code behind
  ``python -m onnxruntime.tools.make_dynamic_shape_fixed``), for runtimes and
  accelerators that want static shapes; checked with the mobile-usability
  checker's shape analysis (no dynamic input, no dynamic value left).
- ``model.optimized.onnx``: ONNX Runtime's graph optimisations saved to a file
  (constant folding, the Shape/Reshape pairs GroupNorm and flatten leave),
  kept only when it runs faster than ``model.onnx``.

Every artefact must give the ``.onnx`` file's logits on the held-out examples
within the export tolerance; the fedge metadata rides along inside each.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from fedge.edge_export.runtime import session_options
from fedge.shared.errors import ModelError
from fedge.shared.run_folder import (
    EXPORTED_FILES,
    ONNX_FP32_FILE,
)

logger = logging.getLogger(__name__)

# Batch-1 timing for the optimised-graph decision and the latency budget.
LATENCY_WARMUP = 50
LATENCY_RUNS = 400
# Largest |logit difference| allowed between ONNX Runtime and PyTorch eager,
# and between model.onnx and each artefact that computes the same function.
DEFAULT_TOLERANCE = 1e-4
# Artefacts that must compute model.onnx's function (int8 rounds on purpose),
# with the batch each takes per call (None: any).
SAME_FUNCTION_AS_ONNX = {
    f.name: f.batch for f in EXPORTED_FILES if f.same_function_as_onnx
}
# Encoded inputs `fedge verify` runs through each of them: a few suffice to
# catch a changed weight, and need no data set on the verifying machine.
VERIFY_EXAMPLES = 8


@dataclass(frozen=True)
class ArtefactCheck:
    """How an artefact compares with ``model.onnx`` on the held-out examples."""

    max_abs_diff: float
    top1_agreement: float

    def to_dict(self) -> dict[str, float]:
        """Plain JSON dict."""
        return {
            "max-abs-diff": self.max_abs_diff,
            "top1-agreement": self.top1_agreement,
        }


def _session(path: Path) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(
            str(path), session_options(1), providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # ORT raises its own untyped pybind errors
        raise ModelError(f"ONNX Runtime cannot load {path.name}: {e}") from e


def logits_of(path: Path, x: np.ndarray, *, batch: int | None = None) -> np.ndarray:
    """Run an artefact on ``x``; ``batch=1`` feeds one example per call."""
    session = _session(path)
    name = session.get_inputs()[0].name
    if batch is None:
        return np.asarray(session.run(None, {name: x})[0])
    return np.concatenate(
        [
            session.run(None, {name: x[i : i + batch]})[0]
            for i in range(0, len(x), batch)
        ]
    )


def compare(
    path: Path,
    reference: np.ndarray,
    x: np.ndarray,
    *,
    tolerance: float,
    batch: int | None = None,
) -> ArtefactCheck:
    """Check that ``path`` gives ``reference`` logits on ``x``, within ``tolerance``.

    Raises
    ------
    ModelError
        A larger difference: the artefact is not written.
    """
    got = logits_of(path, x, batch=batch)
    diff = float(np.max(np.abs(got - reference))) if len(x) else 0.0
    agreement = float(np.mean(got.argmax(1) == reference.argmax(1))) if len(x) else 1.0
    if not diff <= tolerance:
        raise ModelError(
            f"{path.name} differs from the .onnx model by up to {diff:.3g} in the "
            f"logits (tolerance {tolerance:g}); not exported"
        )
    return ArtefactCheck(diff, agreement)


def compare_same_function(
    run_dir: Path, names: list[str], *, tolerance: float
) -> tuple[list[str], list[str]]:
    """Run ``model.onnx`` and each of ``names`` on the same inputs; compare logits.

    The inputs are :data:`VERIFY_EXAMPLES` standard-normal encoded examples
    (encoded features are standardised), seeded, so a run is reproducible.

    Parameters
    ----------
    run_dir : Path
        An exported run folder.
    names : list of str
        Keys of :data:`SAME_FUNCTION_AS_ONNX` present in ``run_dir``.
    tolerance : float
        The export's tolerance (``manifest.json``'s ``export.tolerance``).

    Returns
    -------
    (agree, disagree) : tuple of list of str
        One line per artefact: what matched, and what did not or did not load.
    """
    try:
        session = _session(run_dir / ONNX_FP32_FILE)
    except ModelError as e:
        return [], [f"{ONNX_FP32_FILE}: {_first_line(e)}; no artefact compared"]
    shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((VERIFY_EXAMPLES, *shape[1:])).astype(np.float32)
    reference = logits_of(run_dir / ONNX_FP32_FILE, x, batch=1)
    agree, disagree = [], []
    for name in names:
        try:
            got = logits_of(run_dir / name, x, batch=SAME_FUNCTION_AS_ONNX[name])
        except ModelError as e:
            disagree.append(f"{name}: {_first_line(e)}")
            continue
        diff = float(np.max(np.abs(got - reference)))
        if diff <= tolerance:
            agree.append(
                f"{name}: outputs match {ONNX_FP32_FILE}'s within {tolerance:g} "
                f"on {len(x)} inputs"
            )
        else:
            disagree.append(
                f"{name}: outputs differ from {ONNX_FP32_FILE}'s by up to {diff:.3g} "
                f"on {len(x)} inputs (tolerance {tolerance:g}): one of the two was "
                "changed after export"
            )
    return agree, disagree


def _first_line(error: Exception) -> str:
    # ONNX Runtime's messages run over several lines; the first says what failed.
    return str(error).strip().splitlines()[0]


def to_ort_format(onnx_path: Path, out_dir: Path) -> tuple[Path, Path]:
    """Convert to ORT format with ONNX Runtime's tool; return (.ort, operator config).

    The 'Fixed' optimisation style: the graph is optimised once at conversion,
    so a minimal build (which cannot optimise) runs it as converted.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    work = Path(tempfile.mkdtemp(dir=out_dir, prefix=".ort-"))
    source = work / onnx_path.name
    source.write_bytes(onnx_path.read_bytes())
    try:
        # The tool prints its progress; the export summary says what matters.
        with contextlib.redirect_stdout(io.StringIO()):
            convert_onnx_models_to_ort(
                source, output_dir=work, optimization_styles=[OptimizationStyle.Fixed]
            )
    except Exception as e:  # the tool raises whatever ORT raised
        raise ModelError(
            f"ORT-format conversion of {onnx_path.name} failed: {e}"
        ) from e
    stem = onnx_path.stem
    converted, config = work / f"{stem}.ort", work / f"{stem}.required_operators.config"
    if not converted.is_file() or not config.is_file():
        raise ModelError(
            f"ORT-format conversion of {onnx_path.name} wrote {sorted(p.name for p in work.iterdir())}, "
            f"expected {converted.name} and {config.name}"
        )
    # The tool's header names the temporary folder; keep only the operator lines.
    operators = [
        line
        for line in config.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    config.write_text(
        "# ONNX Runtime operators model.ort needs (a minimal build's --include_ops_by_config)\n"
        + "\n".join(operators)
        + "\n"
    )
    return converted, config


def fixed_batch_one(onnx_path: Path, out_path: Path, input_name: str) -> dict[str, Any]:
    """Write the model with its batch axis fixed to 1; return the checker's findings.

    Raises
    ------
    ModelError
        A dynamic dimension survives (the mobile-usability checker's shape check).
    """
    from onnxruntime.tools.mobile_helpers.usability_checker import (
        PartitioningInfo,
        check_nnapi_partitions,
        check_shapes,
    )
    from onnxruntime.tools.onnx_model_utils import (
        fix_output_shapes,
        make_input_shape_fixed,
    )

    proto = onnx.load(str(onnx_path))
    (value,) = [i for i in proto.graph.input if i.name == input_name]
    dims = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
    make_input_shape_fixed(proto.graph, input_name, [1, *dims[1:]])
    fix_output_shapes(proto)
    inferred = onnx.shape_inference.infer_shapes(
        proto, strict_mode=True, data_prop=True
    )
    onnx.checker.check_model(inferred, full_check=True)
    dynamic_inputs, dynamic_values = check_shapes(inferred.graph)
    if dynamic_inputs or dynamic_values:
        raise ModelError(
            f"{out_path.name}: the mobile-usability checker finds dynamic shapes left "
            f"after fixing the batch to 1 (inputs {dynamic_inputs}, {dynamic_values} "
            "dynamic values); not exported"
        )
    nnapi = check_nnapi_partitions(inferred, require_fixed_input_sizes=True)
    onnx.save_model(proto, str(out_path), save_as_external_data=False)
    return {
        "input-shape": [1, *dims[1:]],
        "dynamic-inputs": 0,
        "dynamic-values": 0,
        "nnapi-suitability": PartitioningInfo.TryWithEP(nnapi.suitability()).name,
        "nnapi-supported-nodes": f"{nnapi.num_supported_nodes}/{nnapi.num_nodes}",
    }


def optimize_offline(onnx_path: Path, out_path: Path) -> None:
    """Save the graph after ONNX Runtime's basic and extended optimisations.

    'Extended' fusions are those every CPU build has; 'all' would add layout
    transformations tied to this machine's instruction set.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(out_path)
    ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    proto = onnx.load(str(out_path))
    metadata = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    if {p.key for p in proto.metadata_props} != set(metadata):
        del proto.metadata_props[:]
        for key, text in metadata.items():
            proto.metadata_props.add(key=key, value=text)
        onnx.save_model(proto, str(out_path), save_as_external_data=False)


def batch1_latency_us(path: Path, example: np.ndarray) -> dict[str, float]:
    """p50 and p95 of one-example calls on one thread, in microseconds."""
    import time

    session = _session(path)
    name = session.get_inputs()[0].name
    x = np.ascontiguousarray(example[None], dtype=np.float32)
    for _ in range(LATENCY_WARMUP):
        session.run(None, {name: x})
    samples = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter_ns()
        session.run(None, {name: x})
        samples.append((time.perf_counter_ns() - start) / 1e3)
    p50, p95 = np.percentile(samples, [50, 95])
    return {"p50-us": float(p50), "p95-us": float(p95)}


def latency_conditions() -> dict[str, Any]:
    """How :func:`batch1_latency_us` measures, and on which machine.

    The figures are this machine's: a device's own differ, so the manifest and
    the model card say where they were taken.
    """
    import os
    import platform

    return {
        "engine": f"onnxruntime {ort.__version__} (CPUExecutionProvider)",
        "threads": 1,
        "batch": 1,
        "warm-up-runs": LATENCY_WARMUP,
        "timed-runs": LATENCY_RUNS,
        "statistic": "p50 (and p95) of the timed runs, in microseconds",
        "measured-on": (
            f"the exporting machine ({platform.machine() or 'unknown CPU'}, "
            f"{os.cpu_count()} logical CPUs, {platform.system()})"
        ),
    }


def check_budgets(
    measured: dict[str, dict[str, float]],
    *,
    max_size_kib: float | None,
    max_latency_us: float | None,
) -> list[str]:
    """Return the artefacts within every budget; raise if none is.

    Parameters
    ----------
    measured : dict
        Artefact name -> ``{"size-kib", "p50-us"}``.

    Raises
    ------
    ModelError
        No artefact meets every budget: says by how much each budget is missed
        and which artefact came closest.
    """
    budgets = {"size-kib": max_size_kib, "p50-us": max_latency_us}
    within = [
        name
        for name, figures in measured.items()
        if all(limit is None or figures[key] <= limit for key, limit in budgets.items())
    ]
    if within or not measured:
        return within
    flags = {
        "size-kib": ("--max-size-kib", "KiB"),
        "p50-us": ("--max-latency-us", "µs"),
    }
    parts = []
    for key, limit in budgets.items():
        if limit is None:
            continue
        best = min(measured, key=lambda n: measured[n][key])
        value = measured[best][key]
        flag, unit = flags[key]
        verdict = f"{value - limit:.1f} {unit} over" if value > limit else "within it"
        parts.append(
            f"{flag} {limit:g}: closest is {best} at {value:.1f} {unit} ({verdict})"
        )
    raise ModelError(
        "no exported artefact meets every budget; "
        + "; ".join(parts)
        + ". Nothing was written: relax a budget or choose a smaller model"
    )

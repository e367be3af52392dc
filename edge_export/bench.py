"""Edge benchmarks: every exported model file and PyTorch eager, one run.

Engines: ONNX Runtime on ``model.onnx`` (fp32), ``model.int8.onnx``,
``model.optimized.onnx``, ``model.ort`` (ORT format) and ``model.fixed.onnx``
(batch 1 only), where the export wrote them, and PyTorch eager.

Every engine runs on one thread (``intra_op_num_threads=1``,
``torch.set_num_threads(1)``), on the same inputs, with its measurements
interleaved in rounds so a change in machine load hits all engines alike.

Measured per engine: batch-1 latency (p50, p95), batch-256 throughput and the
file size. ONNX Runtime is called the way a device loop would call it
(:meth:`EdgeModel.runner`: input and output buffers bound once, graph fully
optimised, sequential execution); a plain ``session.run`` is timed too, to show
what per-call overhead costs. PyTorch eager runs under ``torch.inference_mode``
on a prepared tensor: its fairest eager setting.

``main()`` is the ``make bench`` entry: it trains a small digits CNN briefly,
exports it, and benchmarks it.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedge.edge_export.runtime import EdgeModel
from fedge.shared.run_folder import (
    EXPORTED_FILES,
    MANIFEST_FILE,
    MODEL_INFO_FILE,
    MODEL_WEIGHTS_FILE,
    ONNX_FP32_FILE,
    ONNX_INT8_FILE,
    ModelInfo,
    PrivacySummary,
    save_run_config,
    write_model_info,
)
from fedge.shared.versions import package_versions

DEFAULT_OUT = Path("benchmarks/results/edge.json")
BATCH_LARGE = 256
BATCH1_RUNS = 3000  # timed batch-1 calls per engine
LARGE_RUNS = 60  # timed batch-256 calls per engine
# Targets from issue 6, checked on the digits CNN; issue 12 adds the best ONNX
# artefact's batch-1 latency against eager, for the digits CNN and the series model.
TARGET_ORT_TO_EAGER_B1 = 0.2
TARGET_BEST_ONNX_TO_EAGER_B1 = 0.15
# Engine name -> file, for the artefacts beyond fp32 and int8.
EMBEDDED_ENGINES = {f.engine: f.name for f in EXPORTED_FILES if f.engine is not None}
TARGET_INT8_SIZE_RATIO = 0.3
# Parts of an int8 file that no graph-level change removes: its weights and
# the metadata the device reads.
INT8_FLOOR_PARTS = ("initializers ", "metadata fedge")
TARGET_INT8_DROP_POINTS = 1.0
TARGET_PARITY = 1e-4


def _time_calls(fn: Callable[[], Any], runs: int) -> list[float]:
    """Wall time of each call, in microseconds."""
    samples = []
    clock = time.perf_counter_ns
    for _ in range(runs):
        start = clock()
        fn()
        samples.append((clock() - start) / 1e3)
    return samples


def _resolve(target: Path) -> dict[str, Path | None]:
    """Return the files to benchmark: fp32/int8 ONNX and PyTorch, where present."""
    folder = target if target.is_dir() else target.parent
    fp32 = folder / ONNX_FP32_FILE
    int8 = folder / ONNX_INT8_FILE
    files: dict[str, Path | None] = {
        "onnx-fp32": fp32 if fp32.is_file() else None,
        "onnx-int8": int8 if int8.is_file() else None,
    }
    if target.is_file() and target not in files.values():
        files["onnx-fp32" if ".int8." not in target.name else "onnx-int8"] = target
    for engine, name in EMBEDDED_ENGINES.items():
        if (folder / name).is_file():
            files[engine] = folder / name
    weights, meta = folder / MODEL_WEIGHTS_FILE, folder / MODEL_INFO_FILE
    files["pytorch-eager"] = weights if weights.is_file() and meta.is_file() else None
    if files["onnx-fp32"] is None and files["onnx-int8"] is None:
        raise FileNotFoundError(
            f"no {ONNX_FP32_FILE} or {ONNX_INT8_FILE} at {target}; "
            "run `fedge export` first"
        )
    return files


def _ort_engine(path: Path, batch: int, x: np.ndarray) -> Callable[[], Any]:
    run = EdgeModel.load(path, threads=1).runner(batch)
    return lambda: run(x)


def _ort_plain_engine(path: Path, x: np.ndarray) -> Callable[[], Any]:
    model = EdgeModel.load(path, threads=1)
    session, name = model.session, model.metadata.input_name
    return lambda: session.run(None, {name: x})


def _torch_engine(weights: Path, batch: int, x: np.ndarray) -> Callable[[], Any]:
    import torch  # only here: the runtime and ONNX engines never need it

    from fedge.shared.models import build_model
    from fedge.shared.run_folder import read_model_info

    torch.set_num_threads(1)
    model = build_model(read_model_info(weights.parent).spec)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    tensor = torch.from_numpy(np.ascontiguousarray(x))

    def call() -> Any:
        with torch.inference_mode():
            return model(tensor)

    return call


def bench_edge(
    target: str | Path,
    *,
    batch1_runs: int = BATCH1_RUNS,
    large_runs: int = LARGE_RUNS,
    rounds: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Benchmark a run folder's (or ONNX file's) models; return the figures.

    Parameters
    ----------
    target : path-like
        A run folder after ``fedge export``, or an ONNX file (its siblings are
        benchmarked too).
    batch1_runs : int, default 3000
        Timed batch-1 calls per engine (split over ``rounds``).
    large_runs : int, default 60
        Timed batch-256 calls per engine (split over ``rounds``).
    rounds : int, default 3
        Interleaving rounds (each engine measured once per round).
    seed : int
        Seed of the random inputs (latency of these models does not depend on
        the values).

    Returns
    -------
    dict
        ``engines`` (per-engine figures), ``ratios``, ``targets`` and settings.
    """
    target = Path(target)
    files = _resolve(target)
    first = next(p for k, p in files.items() if k != "pytorch-eager" and p)
    meta = EdgeModel.load(first, threads=1).metadata
    shape = tuple(int(d) for d in meta.input_shape[1:])
    rng = np.random.default_rng(seed)
    x1 = rng.standard_normal((1, *shape)).astype(np.float32)
    xl = rng.standard_normal((BATCH_LARGE, *shape)).astype(np.float32)

    engines: dict[str, dict[str, Callable[[], Any]]] = {}
    for name, path in files.items():
        if path is None:
            continue
        if name == "pytorch-eager":
            engines[name] = {
                "b1": _torch_engine(path, 1, x1),
                "bl": _torch_engine(path, BATCH_LARGE, xl),
            }
        elif name == "onnx-fixed-batch1":  # takes exactly one example
            engines[name] = {"b1": _ort_engine(path, 1, x1)}
        else:
            engines[name] = {
                "b1": _ort_engine(path, 1, x1),
                "bl": _ort_engine(path, BATCH_LARGE, xl),
            }
    if files["onnx-fp32"] is not None:
        engines["onnx-fp32 (session.run)"] = {
            "b1": _ort_plain_engine(files["onnx-fp32"], x1),
            "bl": _ort_plain_engine(files["onnx-fp32"], xl),
        }

    samples: dict[str, dict[str, list[float]]] = {
        n: {"b1": [], "bl": []} for n in engines
    }
    for fns in engines.values():  # warm-up: first calls allocate and plan
        for _ in range(max(50, batch1_runs // 20)):
            fns["b1"]()
        for _ in range(3 if "bl" in fns else 0):
            fns["bl"]()
    for _ in range(rounds):
        for name, fns in engines.items():
            samples[name]["b1"] += _time_calls(fns["b1"], max(1, batch1_runs // rounds))
            if "bl" in fns:
                samples[name]["bl"] += _time_calls(
                    fns["bl"], max(1, large_runs // rounds)
                )

    results: dict[str, dict[str, Any]] = {}
    for name, s in samples.items():
        b1, bl = np.asarray(s["b1"]), np.asarray(s["bl"])
        path = files.get(name.split(" ")[0])
        large_ms = float(np.percentile(bl, 50)) / 1e3 if bl.size else None
        results[name] = {
            "file": None if path is None else path.name,
            "size-bytes": None if path is None else path.stat().st_size,
            "batch1-p50-us": float(np.percentile(b1, 50)),
            "batch1-p95-us": float(np.percentile(b1, 95)),
            f"batch{BATCH_LARGE}-p50-ms": large_ms,
            f"batch{BATCH_LARGE}-throughput-per-s": None
            if large_ms is None
            else BATCH_LARGE / (large_ms / 1e3),
        }
    figures = {
        "target": str(target),
        "model": meta.model_name,
        "input-shape": list(meta.input_shape),
        "threads": 1,
        "batch1-runs": batch1_runs,
        f"batch{BATCH_LARGE}-runs": large_runs,
        "engines": results,
        "machine": _machine(),
    }
    figures["ratios"], figures["targets"] = _targets(results, target)
    figures["size-breakdown"] = _size_breakdowns(files)
    return figures


def _size_breakdowns(files: dict[str, Path | None]) -> dict[str, Any]:
    """Bytes per part of the fp32 and int8 files, and int8's floor.

    The floor is what the int8 file would weigh with no graph at all (its
    initializers and metadata only): if even that is above the size target,
    no graph-level saving can meet it.
    """
    import onnx  # only here: the engines themselves run on onnxruntime

    from fedge.edge_export.onnx_size import size_breakdown

    parts = {
        engine: size_breakdown(onnx.load(str(path)))
        for engine in ("onnx-fp32", "onnx-int8")
        if (path := files.get(engine)) is not None
    }
    out: dict[str, Any] = {"parts": parts}
    if len(parts) == 2:
        int8 = parts["onnx-int8"]
        floor = sum(v for k, v in int8.items() if k.startswith(INT8_FLOOR_PARTS))
        out["int8-floor-bytes"] = floor
        out["int8-floor-to-fp32"] = floor / parts["onnx-fp32"]["total"]
    return out


def _targets(
    results: dict[str, dict[str, Any]], target: Path
) -> tuple[dict[str, float | None], list[dict[str, Any]]]:
    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    def get(engine: str, key: str) -> float | None:
        value: float | None = results.get(engine, {}).get(key)
        return value

    ratios = {
        "ort-fp32-to-eager-batch1-p50": ratio(
            get("onnx-fp32", "batch1-p50-us"), get("pytorch-eager", "batch1-p50-us")
        ),
        "ort-int8-to-eager-batch1-p50": ratio(
            get("onnx-int8", "batch1-p50-us"), get("pytorch-eager", "batch1-p50-us")
        ),
        "ort-int8-to-fp32-batch1-p50": ratio(
            get("onnx-int8", "batch1-p50-us"), get("onnx-fp32", "batch1-p50-us")
        ),
        "ort-int8-to-fp32-batch256-throughput": ratio(
            get("onnx-int8", f"batch{BATCH_LARGE}-throughput-per-s"),
            get("onnx-fp32", f"batch{BATCH_LARGE}-throughput-per-s"),
        ),
        "int8-to-fp32-size": ratio(
            get("onnx-int8", "size-bytes"), get("onnx-fp32", "size-bytes")
        ),
    }
    onnx_engines = [
        e for e in results if e.startswith(("onnx", "ort")) and " " not in e
    ]
    best = min(onnx_engines, key=lambda e: results[e]["batch1-p50-us"], default=None)
    ratios["best-onnx-to-eager-batch1-p50"] = (
        None
        if best is None
        else ratio(get(best, "batch1-p50-us"), get("pytorch-eager", "batch1-p50-us"))
    )
    manifest = _manifest(target)
    accuracy = manifest.get("accuracy", {})
    drop = None
    if accuracy.get("onnx-int8") is not None and accuracy.get("onnx-fp32") is not None:
        drop = 100.0 * (accuracy["onnx-fp32"] - accuracy["onnx-int8"])
    parity = manifest.get("parity", {}).get("max-abs-diff")
    checks = [
        (
            "ORT fp32 batch-1 p50 / eager",
            ratios["ort-fp32-to-eager-batch1-p50"],
            TARGET_ORT_TO_EAGER_B1,
        ),
        (
            f"best ONNX ({best}) b1 p50 / eager",
            ratios["best-onnx-to-eager-batch1-p50"],
            TARGET_BEST_ONNX_TO_EAGER_B1,
        ),
        ("int8 file / fp32 file", ratios["int8-to-fp32-size"], TARGET_INT8_SIZE_RATIO),
        ("int8 top-1 drop (points)", drop, TARGET_INT8_DROP_POINTS),
        ("parity max |diff|", parity, TARGET_PARITY),
    ]
    targets = [
        {"name": n, "value": v, "target": t, "met": None if v is None else v <= t}
        for n, v, t in checks
    ]
    return ratios, targets


def _manifest(target: Path) -> dict[str, Any]:
    path = (target if target.is_dir() else target.parent) / MANIFEST_FILE
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError):
        return {}


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "versions": package_versions(("onnxruntime", "torch", "numpy")),
    }


def format_table(figures: dict[str, Any]) -> str:
    """Return the figures as a plain-text table, then the targets."""
    large = f"batch{BATCH_LARGE}-throughput-per-s"
    lines = [
        f"{'engine':<26}{'size KiB':>10}{'b1 p50 µs':>12}{'b1 p95 µs':>12}"
        f"{'b256 /s':>12}",
    ]
    for name, r in figures["engines"].items():
        size = "" if r["size-bytes"] is None else f"{r['size-bytes'] / 1024:.1f}"
        throughput = "-" if r[large] is None else f"{r[large]:.0f}"
        lines.append(
            f"{name:<26}{size:>10}{r['batch1-p50-us']:>12.1f}{r['batch1-p95-us']:>12.1f}"
            f"{throughput:>12}"
        )
    lines.append("")
    for t in figures["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.3g}"
        met = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        lines.append(f"{t['name']:<32}{value:>10}  (target <= {t['target']:g})  {met}")
    lines += _format_size_breakdown(figures.get("size-breakdown", {}))
    return "\n".join(lines)


def _format_size_breakdown(breakdown: dict[str, Any]) -> list[str]:
    """Bytes per part of the fp32 and int8 files, side by side."""
    parts: dict[str, dict[str, int]] = breakdown.get("parts", {})
    if not parts:
        return []
    engines = list(parts)
    found = dict.fromkeys(k for p in parts.values() for k in p if k != "total")
    keys = [*sorted(k for k in found if k.startswith("initializers ")), "total"]
    keys[-1:-1] = [k for k in found if not k.startswith("initializers ")]
    lines = ["", f"{'bytes by part':<26}" + "".join(f"{e:>12}" for e in engines)]
    for key in keys:
        lines.append(
            f"{key:<26}" + "".join(f"{parts[e].get(key, 0):>12}" for e in engines)
        )
    if "int8-floor-bytes" in breakdown:
        lines.append(
            f"int8 floor (initializers + fedge metadata, no graph): "
            f"{breakdown['int8-floor-bytes']} bytes = "
            f"{breakdown['int8-floor-to-fp32']:.3f} x fp32"
        )
    return lines


def write_results(figures: dict[str, Any], out: Path) -> None:
    """Write the figures as JSON, creating the folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


def _build_digits_run(
    run_dir: Path, *, steps: int = 400, dataset: str = "digits", model: str = "cnn"
) -> None:
    """Train a model briefly on a built-in set and write a run folder as the server does."""
    import torch
    from torch import nn

    from fedge.shared.config import from_run_config
    from fedge.shared.datasets import load_builtin
    from fedge.shared.models import build_model, default_spec

    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = load_builtin(dataset, "train")
    prep = data.preprocessing
    spec = default_spec(model, prep.input_shape, prep.num_classes)
    net = build_model(spec, model_seed=0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(y), 32))
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), run_dir / MODEL_WEIGHTS_FILE)
    config = from_run_config({"dataset": dataset, "model": model}, fill_defaults=True)
    save_run_config(run_dir, config)
    write_model_info(
        run_dir,
        ModelInfo(
            spec=spec,
            preprocessing=data.preprocessing,
            provenance={
                "rounds": 0,
                "strategy": "centralised (benchmark)",
                "num-clients": 1,
                "dataset": dataset,
                "dataset-fingerprint": data.fingerprint(),
            },
            privacy=PrivacySummary(dp_mode="none"),
        ),
    )


def main() -> dict[str, Any]:
    """``make bench`` entry: train, export and benchmark the digits CNN and a series model.

    The series model is the 1-D CNN on basic-motions (``model = "auto"`` for
    time series), trained 200 steps; its figures are under ``"series"``.
    """
    from fedge.edge_export.pipeline import export_run

    with tempfile.TemporaryDirectory(prefix="fedge-edge-bench-") as tmp:
        run_dir = Path(tmp) / "digits"
        _build_digits_run(run_dir)
        export_run(run_dir)
        figures = bench_edge(run_dir)
        series_dir = Path(tmp) / "basic-motions"
        _build_digits_run(series_dir, steps=200, dataset="basic-motions", model="cnn1d")
        export_run(series_dir)
        series = bench_edge(series_dir)
        series["accuracy"] = _manifest(series_dir).get("accuracy", {})
    figures["target"] = "digits CNN (trained 400 steps, exported with defaults)"
    series["target"] = "basic-motions cnn1d (trained 200 steps, exported with defaults)"
    figures["series"] = series
    print(format_table(figures))
    print()
    print(series["target"])
    print(format_table(series))
    return figures

"""``fedge export RUN_DIR``: ONNX + int8 + manifest for a finished run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fedge export``."""
    # torch: imported only for `fedge export`, which needs it anyway.
    from fedge.edge_export.embedded import DEFAULT_TOLERANCE
    from fedge.edge_export.pipeline import QUANTIZE_CHOICES

    p = subparsers.add_parser(
        "export",
        help="export a run's model to ONNX (+ int8) with metadata and a manifest",
        description=(
            "Rebuild RUN_DIR's final model from model.json + model.pt, export it to "
            "model.onnx (opset 18, dynamic batch, metadata inside), check it with "
            "the ONNX checker and against PyTorch on the held-out split, quantise "
            "it to model.int8.onnx, build the embedded artefacts (model.ort with "
            "required_operators.config, the batch-1 static model.fixed.onnx, the "
            "offline-optimised model.optimized.onnx when faster), check each "
            "against model.onnx and write manifest.json. Nothing is written if "
            "a check or a budget fails."
        ),
    )
    p.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="a finished run folder"
    )
    p.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        default="auto",
        help="int8 method; auto keeps static-qdq if within 1 accuracy point of "
        "fp32, else dynamic, else none (default: auto)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="largest allowed |logit difference| ONNX vs PyTorch "
        f"(default: {DEFAULT_TOLERANCE:g})",
    )
    p.add_argument(
        "--sign-key",
        type=Path,
        metavar="KEY",
        help="elliptic-curve private key (PEM, e.g. from `fedge keygen`): sign "
        "manifest.json, which hashes every artefact, into manifest.sig",
    )
    p.add_argument(
        "--max-size-kib",
        type=float,
        default=None,
        metavar="KIB",
        help="budget: some model file must be at most this large, else nothing "
        "is written",
    )
    p.add_argument(
        "--max-latency-us",
        type=float,
        default=None,
        metavar="US",
        help="budget: some model file must answer one example within this many "
        "µs (p50, one thread, measured here), else nothing is written",
    )
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text summary or the manifest as JSON (default: text)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Export; print a summary. User errors raise FedgeError (exit 2)."""
    from fedge.reports.model_card import export_run_with_card  # torch: when used
    from fedge.shared.run_folder import (
        BATCH1_LATENCY,
        ONNX_FP32_FILE,
        ONNX_OPTIMIZED_FILE,
    )

    for flag, value in (
        ("--max-size-kib", args.max_size_kib),
        ("--max-latency-us", args.max_latency_us),
    ):
        if value is not None and not value > 0:
            print(
                f"fedge export: error: {flag} must be > 0, got {value:g}",
                file=sys.stderr,
            )
            return 2
    manifest = export_run_with_card(
        args.run_dir,
        quantize=args.quantize,
        tolerance=args.tolerance,
        sign_key=args.sign_key,
        max_size_kib=args.max_size_kib,
        max_latency_us=args.max_latency_us,
    )
    if args.format == "json":
        print(json.dumps(manifest.to_dict(), indent=2))
        return 0
    acc, parity, quant = manifest.accuracy, manifest.parity, manifest.quantization
    print(f"exported {args.run_dir}")
    for name, entry in manifest.artefacts.items():
        print(
            f"  {name:<26} {entry['size-bytes']:>10} bytes  sha256 {entry['sha256'][:16]}…"
        )
    print(
        f"  parity: max |diff| {parity['max-abs-diff']:.3g} (tolerance "
        f"{parity['tolerance']:g}), top-1 agreement {parity['top1-agreement']:.2%}"
    )
    int8 = acc["onnx-int8"]
    print(
        f"  accuracy on {acc['split']} ({acc['num-examples']} examples): pytorch "
        f"{acc['pytorch']:.4f}, onnx fp32 {acc['onnx-fp32']:.4f}, onnx int8 "
        f"{'-' if int8 is None else f'{int8:.4f}'}"
    )
    for method, c in quant.get("candidates", {}).items():
        print(
            f"  int8 {method:<10}: accuracy {c['accuracy']:.4f}, "
            f"{c['size-ratio']:.2f}× fp32 size"
        )
    print(f"  int8 kept: {quant.get('chosen') or 'none'} ({quant.get('reason')})")
    print(
        f"  signed with {args.sign_key} (manifest.sig)"
        if args.sign_key
        else "  unsigned (give --sign-key KEY to sign the manifest)"
    )
    embedded = manifest.embedded
    for name, figures in embedded.get(BATCH1_LATENCY, {}).items():
        print(
            f"  batch 1, one thread: {name:<22} p50 {figures['p50-us']:8.1f} µs, "
            f"p95 {figures['p95-us']:8.1f} µs, {figures['size-kib']:7.1f} KiB"
        )
    optimized = embedded.get("checks", {}).get(ONNX_OPTIMIZED_FILE, {})
    if optimized and not optimized.get("kept"):
        print(f"  {ONNX_OPTIMIZED_FILE} not kept: no faster than {ONNX_FP32_FILE} here")
    return 0

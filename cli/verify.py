"""``fedge verify RUN_DIR [--public-key KEY]``: hashes, metadata and signature."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fedge verify``."""
    p = subparsers.add_parser(
        "verify",
        help="check an exported run folder against its manifest (exit 1 if changed)",
        description=(
            "Re-hash every file listed in RUN_DIR/manifest.json, cross-check the "
            "metadata inside the ONNX files with model.json, and run model.ort, "
            "model.fixed.onnx and model.optimized.onnx on a few inputs: their "
            "outputs must equal model.onnx's within the export's tolerance. "
            "Exit 0 if all match, "
            "1 if anything was changed, truncated or removed, 2 if there is no "
            "readable manifest."
        ),
    )
    p.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="an exported run folder"
    )
    p.add_argument(
        "--public-key",
        type=Path,
        metavar="KEY",
        help="the exporter's public key (PEM): also require manifest.sig to be its "
        "valid signature (hashes detect corruption; the signature, tampering). "
        "Without it the signature is not checked and the export counts as unsigned",
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Verify; 0 intact, 1 tampered. A missing manifest raises (exit 2)."""
    from fedge.edge_export.manifest import verify_run

    report = verify_run(args.run_dir, public_key=args.public_key)
    if args.format == "json":
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "signature": report.signature,
                    "checked": report.checked,
                    "problems": report.problems,
                },
                indent=2,
            )
        )
    else:
        for line in report.checked:
            print(f"ok       {line}")
        for line in report.problems:
            print(f"PROBLEM  {line}", file=sys.stderr)
        if report.ok and report.signature == "unsigned":
            print(
                f"{args.run_dir}: intact ({len(report.checked)} checks passed); "
                "unsigned: signature not checked (give --public-key KEY), so the "
                "hashes rule out corruption but not a rewrite of files and manifest"
            )
        elif report.ok:
            print(
                f"{args.run_dir}: intact and signed ({len(report.checked)} checks "
                "passed)"
            )
        else:
            print(
                f"{args.run_dir}: REFUSED, {len(report.problems)} problem(s); do not "
                "deploy these files. Re-export with `fedge export` or restore them.",
                file=sys.stderr,
            )
    return 0 if report.ok else 1

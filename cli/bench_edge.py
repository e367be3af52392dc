"""``fedge bench-edge MODEL_OR_RUN_DIR``: ONNX fp32 / int8 / PyTorch, one thread each."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fedge bench-edge``."""
    from fedge.edge_export.bench import BATCH1_RUNS, DEFAULT_OUT, LARGE_RUNS

    p = subparsers.add_parser(
        "bench-edge",
        help="latency, throughput and size of the exported models vs PyTorch",
        description=(
            "Measure batch-1 latency (p50/p95, µs), batch-256 throughput "
            "(examples/s) and file size for ONNX Runtime fp32, ONNX Runtime int8 "
            "and PyTorch eager, all on one thread, in one interleaved run. Prints "
            "a table and writes JSON."
        ),
    )
    p.add_argument(
        "target",
        type=Path,
        metavar="MODEL_OR_RUN_DIR",
        help="an exported run folder, or an .onnx file (siblings are included)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"JSON results file (default: {DEFAULT_OUT})",
    )
    p.add_argument(
        "--runs",
        type=int,
        default=BATCH1_RUNS,
        help=f"timed batch-1 calls per engine (default: {BATCH1_RUNS})",
    )
    p.add_argument(
        "--large-runs",
        type=int,
        default=LARGE_RUNS,
        help=f"timed batch-256 calls per engine (default: {LARGE_RUNS})",
    )
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Benchmark, print, write JSON."""
    from fedge.edge_export.bench import bench_edge, format_table, write_results

    if not args.target.exists():
        print(f"fedge bench-edge: error: {args.target} does not exist", file=sys.stderr)
        return 2
    try:
        figures = bench_edge(
            args.target, batch1_runs=args.runs, large_runs=args.large_runs
        )
    except FileNotFoundError as e:
        print(f"fedge bench-edge: error: {e}", file=sys.stderr)
        return 2
    write_results(figures, args.out)
    print(
        json.dumps(figures, indent=2)
        if args.format == "json"
        else format_table(figures)
    )
    print(f"results written to {args.out}")
    return 0

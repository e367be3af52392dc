"""``fedge predict MODEL INPUT -o predictions.csv``: torch-free batch prediction.

This command imports only the edge runtime (ONNX Runtime and NumPy), so it runs
where fedge's training stack is not installed.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # the runtime is imported only when a command runs
    from edge_export.runtime import Prediction


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fedge predict``."""
    p = subparsers.add_parser(
        "predict",
        help="predict with an exported ONNX model (no torch needed)",
        description=(
            "Encode INPUT with the preprocessing stored in MODEL's metadata, run it "
            "with ONNX Runtime and write one row per input: the predicted label and "
            "one probability column per class. INPUT is a CSV (raw feature columns; "
            "extra columns ignored), a .npz with an array 'x', or Parquet."
        ),
    )
    p.add_argument(
        "model",
        type=Path,
        metavar="MODEL",
        help="model.onnx / model.int8.onnx, or a run folder (uses model.onnx)",
    )
    p.add_argument(
        "input", type=Path, metavar="INPUT", help="input .csv, .npz or .parquet"
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="CSV to write (default: standard output)",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="ONNX Runtime threads (default: 1)"
    )
    p.add_argument(
        "--public-key",
        type=Path,
        metavar="KEY",
        help="the exporter's public key (PEM): refuse the model unless the "
        "manifest beside it is validly signed by KEY and lists the model's hash",
    )
    p.set_defaults(run=run)


def probability_column(label: str) -> str:
    """Name of the probability column for a class label."""
    return f"probability_{label}"


def write_predictions(prediction: Prediction, out: TextIO) -> None:
    """Write ``label`` then one ``probability_<class>`` column per class."""
    labels = prediction.labels
    probabilities = prediction.probabilities
    classes = prediction.class_labels
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["label", *(probability_column(c) for c in classes)])
    for label, row in zip(labels, probabilities, strict=True):
        # 9 significant digits round-trip a float32 exactly.
        writer.writerow([label, *(format(float(p), ".9g") for p in row)])


def run(args: argparse.Namespace) -> int:
    """Predict; a bad model or input prints one line and returns 2."""
    from edge_export.runtime import EdgeError, EdgeModel
    from shared.run_folder import ONNX_FP32_FILE

    model_path = args.model / ONNX_FP32_FILE if args.model.is_dir() else args.model
    try:
        model = EdgeModel.load(
            model_path, threads=args.threads, public_key=args.public_key
        )
        prediction = model.predict(args.input)
    except EdgeError as e:
        print(f"fedge predict: error: {e}", file=sys.stderr)
        return 2
    if model.signature == "unsigned":
        print(
            f"model {model_path}: unsigned (signature not checked; give "
            "--public-key KEY to require one)",
            file=sys.stderr,
        )
    else:
        print(f"model {model_path}: signature {model.signature}", file=sys.stderr)
    if args.output is None:
        write_predictions(prediction, sys.stdout)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with open(args.output, "w", newline="", encoding="utf-8") as f:
            write_predictions(prediction, f)
        print(
            f"wrote {len(prediction.labels)} predictions to {args.output}",
            file=sys.stderr,
        )
    return 0

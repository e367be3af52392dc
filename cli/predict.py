"""``fedge predict MODEL INPUT -o predictions.csv``: torch-free batch prediction.

With ``--window N [--stride M]``, INPUT is one long sensor recording and each
sliding window gets a prediction (:meth:`EdgeModel.stream`).

This command imports only the edge runtime (ONNX Runtime and NumPy), so it runs
where fedge's training stack is not installed.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # the runtime is imported only when a command runs
    from fedge.edge_export.runtime import Prediction, StreamPrediction


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fedge predict``."""
    p = subparsers.add_parser(
        "predict",
        help="predict with an exported ONNX model (no torch needed)",
        description=(
            "Encode INPUT with the preprocessing stored in MODEL's metadata, run it "
            "with ONNX Runtime and write one row per input: the predicted label and "
            "one probability column per class. INPUT is a CSV (raw feature columns; "
            "extra columns ignored), a .npz with an array 'x', or Parquet. With "
            "--window, INPUT is one long recording for a time-series model (a CSV "
            "with a column per channel and an optional timestamp column, or a .npz "
            "with x of shape (channels, steps)) and each window gets a row, with "
            "its start step and timestamp."
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
    p.add_argument(
        "--window",
        type=int,
        default=None,
        metavar="N",
        help="time-series models: predict every window of N steps of a recording",
    )
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        metavar="M",
        help="steps between window starts (default: the window, no overlap)",
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


def write_windows(stream: StreamPrediction, out: TextIO) -> None:
    """Write ``start`` (and ``timestamp``) before each window's prediction columns."""
    buffer = io.StringIO()
    write_predictions(stream.prediction, buffer)
    rows = buffer.getvalue().splitlines()
    times = stream.timestamps
    head = "start,timestamp," if times is not None else "start,"
    out.write(head + rows[0] + "\n")
    for i, row in enumerate(rows[1:]):
        stamp = f"{times[i]}," if times is not None else ""
        out.write(f"{stream.starts[i]},{stamp}{row}\n")


def run(args: argparse.Namespace) -> int:
    """Predict; a bad model or input prints one line and returns 2."""
    from fedge.edge_export.runtime import EdgeError, EdgeModel
    from fedge.shared.run_folder import ONNX_FP32_FILE

    if args.stride is not None and args.window is None:
        print("fedge predict: error: --stride needs --window", file=sys.stderr)
        return 2
    model_path = args.model / ONNX_FP32_FILE if args.model.is_dir() else args.model
    stream: StreamPrediction | None = None
    try:
        model = EdgeModel.load(
            model_path, threads=args.threads, public_key=args.public_key
        )
        if args.window is None:
            prediction = model.predict(args.input)
        else:
            stream = model.stream(args.input, window=args.window, stride=args.stride)
            prediction = stream.prediction
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

    def write(out: TextIO) -> None:
        if stream is None:
            write_predictions(prediction, out)
        else:
            write_windows(stream, out)

    if args.output is None:
        write(sys.stdout)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with open(args.output, "w", newline="", encoding="utf-8") as f:
            write(f)
        print(
            f"wrote {len(prediction.labels)} predictions to {args.output}",
            file=sys.stderr,
        )
    return 0

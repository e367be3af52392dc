"""``fedge check-data``: check a node's data file before the node joins a federation.

Reads the file as the ClientApp would and reports what it found, or the first
problem with file, column and row. With ``--reference`` (the coordinator's
held-out file, or a run's ``model.json``) the file is encoded with the
federation's preprocessing, which also catches missing columns and unknown labels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from shared.errors import DataError


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``fedge check-data``."""
    p = subparsers.add_parser(
        "check-data",
        help="check a node's CSV/Parquet/.npz file before it joins",
        description=(
            "Read a node's data file as the ClientApp would and report rows, features "
            "and labels, or the first problem (file, column, row)."
        ),
    )
    p.add_argument("path", type=Path, help="the node's CSV, Parquet or .npz file")
    p.add_argument(
        "--label-column", default="label", help="label column (default: label)"
    )
    p.add_argument(
        "--reference",
        type=Path,
        help="the coordinator's held-out file, or a run's model.json: encode with "
        "the federation's preprocessing",
    )
    p.add_argument(
        "--impute",
        choices=("none", "mean"),
        default="none",
        help="missing values: refuse (none, default) or impute (mean)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print a summary of the file; DataError (exit 2) names what is wrong."""
    from shared.datasets import fit_file, load_file
    from shared.preprocessing import Preprocessing

    if args.reference is None:
        dataset = fit_file(
            args.path, label_column=args.label_column, impute=args.impute
        )
    elif args.reference.suffix == ".json":
        try:
            meta = json.loads(args.reference.read_text())
            preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{args.reference} is not a fedge model.json: {e}") from e
        dataset = load_file(args.path, preprocessing)
    else:
        reference = fit_file(
            args.reference, label_column=args.label_column, impute=args.impute
        )
        dataset = load_file(args.path, reference.preprocessing)
    prep = dataset.preprocessing
    counts = np.bincount(dataset.y, minlength=prep.num_classes)
    print(f"{args.path}: {len(dataset)} examples, encoded shape {prep.input_shape}")
    if prep.kind == "tabular":
        print(
            f"  {len(prep.numeric_columns)} numeric, {len(prep.categories)} categorical columns"
        )
    print(
        "  labels: "
        + ", ".join(f"{c}={n}" for c, n in zip(prep.class_names, counts, strict=True))
    )
    missing = [c for c, n in zip(prep.class_names, counts, strict=True) if n == 0]
    if missing:
        print(f"  note: no examples of {missing} (fine for a non-IID node)")
    print("ok: this node's data can join")
    return 0

"""``fedge node``: a data owner's commands, run on the node's own machine.

``fedge node check FILE`` reads the node's data file as the ClientApp would and
reports what it found, or the first problem with file, column and row. With
``--reference`` (the coordinator's held-out file, or a run's ``model.json``) the
file is encoded with the federation's preprocessing, which also catches missing
columns and unknown labels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from shared.config import IMPUTE_MODES, default_run_config
from shared.errors import DataError

if TYPE_CHECKING:  # the data stack (pandas) loads only when the command runs
    from shared.datasets import Dataset


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``fedge node`` and its subcommands."""
    node = subparsers.add_parser(
        "node",
        help="a data owner's node: check its data, start it",
        description="A data owner's commands: check the node's data, then start it.",
    )
    actions = node.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    _add_check(actions)


def _add_check(actions: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    defaults = default_run_config()
    p = actions.add_parser(
        "check",
        help="check the node's CSV/Parquet/.npz file before it joins",
        description=(
            "Read a node's data file as the ClientApp would and report rows, features "
            "and labels, or the first problem (file, column, row)."
        ),
    )
    p.add_argument("path", type=Path, help="the node's CSV, Parquet or .npz file")
    p.add_argument(
        "--label-column",
        default=defaults["label-column"],
        help=f"label column (default: {defaults['label-column']})",
    )
    p.add_argument(
        "--reference",
        type=Path,
        help="the coordinator's held-out file, or a run's model.json: encode with "
        "the federation's preprocessing",
    )
    p.add_argument(
        "--impute",
        choices=IMPUTE_MODES,
        default=defaults["impute"],
        help="missing values: none refuses them, mean imputes them "
        f"(default: {defaults['impute']})",
    )
    p.set_defaults(run=run_check)


def check_node_file(
    path: Path, *, label_column: str, impute: str, reference: Path | None
) -> Dataset:
    """Load ``path`` as a node would, with the federation's preprocessing if known.

    Returns
    -------
    Dataset
        The encoded data.

    Raises
    ------
    DataError
        Naming the file, column and row of the first problem, or a reference
        ``model.json`` that is not one.
    """
    from shared.datasets import fit_file, load_file
    from shared.preprocessing import Preprocessing

    if reference is None:
        return fit_file(path, label_column=label_column, impute=impute)
    if reference.suffix == ".json":
        try:
            meta = json.loads(reference.read_text())
            preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{reference} is not a fedge model.json: {e}") from e
        return load_file(path, preprocessing)
    fitted = fit_file(reference, label_column=label_column, impute=impute)
    return load_file(path, fitted.preprocessing)


def run_check(args: argparse.Namespace) -> int:
    """Print a summary of the file; DataError (exit 2) names what is wrong."""
    import numpy as np

    dataset = check_node_file(
        args.path,
        label_column=args.label_column,
        impute=args.impute,
        reference=args.reference,
    )
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

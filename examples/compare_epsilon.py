"""Simulate on your own CSV with DP-SGD at two privacy budgets, and compare them.

The CSV is scikit-learn's breast-cancer table (shipped inside its wheel; nothing
is downloaded), written as a user's file with a label column ``target``. Each
budget is one :func:`fedge.simulate` run; :meth:`fedge.Run.compare` puts them
side by side, round by round.

Run: ``python examples/compare_epsilon.py --out DIR`` (default: the
``FEDGE_EXAMPLES_OUT`` environment variable, else ``examples/out``). Everything
is written under ``DIR``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import fedge


def write_csv(path: Path) -> Path:
    """Write the breast-cancer table as a CSV with a ``target`` label column."""
    from sklearn.datasets import load_breast_cancer

    path.parent.mkdir(parents=True, exist_ok=True)
    load_breast_cancer(as_frame=True).frame.to_csv(path, index=False)
    return path


def main(argv: list[str] | None = None) -> None:
    """Two runs, one per ε; print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("FEDGE_EXAMPLES_OUT", "examples/out")),
        help="folder for the CSV and the run folders",
    )
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--epsilons", type=float, nargs=2, default=(1.0, 8.0), metavar="EPSILON"
    )
    args = parser.parse_args(argv)

    csv = write_csv(args.out / "patients.csv")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = [
        fedge.simulate(
            data=csv,
            label_column="target",
            clients=args.clients,
            rounds=args.rounds,
            dp_mode="sample",
            target_epsilon=epsilon,
            output_dir=args.out / "runs",
            run_name=f"{stamp}-epsilon-{epsilon:g}",
            set={"local-epochs": 1},
        )
        for epsilon in args.epsilons
    ]
    print(fedge.Run.compare(runs).to_string(index=False))
    for run in runs:
        print(
            f"{run.name}: accuracy {run.accuracy:.4f}, ε per node {run.epsilon_per_node}"
        )


if __name__ == "__main__":
    main()

"""``make demo``: the default federated run on the built-in digits data.

10 virtual clients, IID partitions, FedAvg, the defaults in pyproject.toml.
Prints the final central accuracy and the run folder, and says whether the
model reached the accuracy a user should expect.
"""

from __future__ import annotations

import sys
from pathlib import Path

from shared.errors import FedgeError
from simulations.simulate import read_status, simulate

NUM_CLIENTS = 10
EXPECTED_ACCURACY = 0.90


def main() -> int:
    """Run the demo; exit 0 when it completed and met the expected accuracy."""
    try:
        run_dir = simulate(
            {}, num_clients=NUM_CLIENTS, output_dir=Path("runs"), run_name=""
        )
    except FedgeError as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    accuracy = float(read_status(run_dir)["final_accuracy"])
    verdict = "meets" if accuracy >= EXPECTED_ACCURACY else "is BELOW"
    print()
    print(
        f"Final central accuracy on the digits test split: {accuracy:.4f} "
        f"({verdict} the expected {EXPECTED_ACCURACY:.2f})"
    )
    print(f"Run folder: {run_dir.resolve()}")
    return 0 if accuracy >= EXPECTED_ACCURACY else 1


if __name__ == "__main__":
    sys.exit(main())

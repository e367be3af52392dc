"""``make bench``: run every benchmark, print its figures, write results JSON.

Each benchmark module has ``main() -> dict`` returning flat figures; they are
measured in one run on this machine, so ratios between them are meaningful.
Run one with ``python -m benchmarks NAME``.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# name -> module; each is independent, so one failing does not hide the others.
BENCHMARKS = {
    "simulation_round": "benchmarks.simulation_round",
    "coordinator": "benchmarks.coordinator",
    "edge": "fedge.edge_export.bench",
    "dp_overhead": "benchmarks.dp_overhead",
    "simulation_overhead": "benchmarks.simulation_overhead",
    "deployment_round": "benchmarks.deployment_round",
    "frozen_backbone": "benchmarks.frozen_backbone",
    "startup": "benchmarks.startup",
}


def main(argv: list[str]) -> int:
    """Run the named benchmarks (all by default); exit 1 if any failed."""
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(
            f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
        print(f"== {name}", flush=True)
        started = time.monotonic()
        try:
            figures = importlib.import_module(BENCHMARKS[name]).main()
        except (
            Exception
        ) as e:  # report and go on: one broken benchmark hides nothing else
            print(f"   FAILED: {type(e).__name__}: {e}", flush=True)
            failed.append(name)
            continue
        figures = {
            **figures,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "benchmark_wall_s": round(time.monotonic() - started, 1),
        }
        for key, value in figures.items():
            if not isinstance(value, list | dict):
                print(f"   {key:<28} {value}")
        (RESULTS_DIR / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"results in {RESULTS_DIR}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

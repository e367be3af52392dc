"""Seconds per simulated round and peak memory: 10 clients on digits.

Round time is the coordinator's wall time for a whole round (sampling, client
training on the simulation engine, aggregation, central evaluation, files), as
recorded in the run's ``metrics.csv``; the first round also pays for starting the
simulation engine's workers, so it is reported apart. Peak memory is the summed
RSS of this process and everything it starts (SuperLink, simulation engine,
ServerApp, Ray workers).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.process_memory import PeakMemorySampler
from fedge.shared.run_folder import (
    CENTRAL_ACCURACY,
    METRICS_CSV_FILE,
    ROUND,
    ROUND_TIME_S,
)
from fedge.simulations.simulate import simulate

NUM_CLIENTS = 10
NUM_ROUNDS = 5


def main() -> dict[str, Any]:
    """Run the benchmark and return its figures."""
    with tempfile.TemporaryDirectory(prefix="fedge-bench-") as tmp:
        started = time.monotonic()
        with PeakMemorySampler() as memory:
            run_dir = simulate(
                {"num-server-rounds": NUM_ROUNDS},
                num_clients=NUM_CLIENTS,
                output_dir=Path(tmp),
                run_name="bench",
                echo=lambda *_: None,
            )
        total_s = time.monotonic() - started
        metrics = pd.read_csv(run_dir / METRICS_CSV_FILE)
    rounds = metrics[metrics[ROUND] > 0]
    steady = rounds[rounds[ROUND] > 1][ROUND_TIME_S]
    return {
        "name": "simulation_round",
        "clients": NUM_CLIENTS,
        "rounds": NUM_ROUNDS,
        "dataset": "digits",
        "first_round_s": float(rounds[ROUND_TIME_S].iloc[0]),
        "seconds_per_round": float(steady.mean()),
        "seconds_per_round_max": float(steady.max()),
        "total_wall_s": round(total_s, 2),
        "peak_memory_mib": round(memory.peak_bytes / 2**20, 1),
        "final_accuracy": float(rounds[CENTRAL_ACCURACY].iloc[-1]),
    }


if __name__ == "__main__":
    print(main())

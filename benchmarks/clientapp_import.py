"""Seconds to import the ClientApp in a fresh process: what a deployed node pays per message.

Flower starts a new ``flwr-clientapp`` process for every message a SuperNode
receives, and that process imports ``fedge.client.client_app`` before any work. This
times exactly that import (wall clock, in a fresh interpreter each time, median
of a few), and which heavy libraries it loaded. Reused by the
``simulation_overhead`` and ``deployment_round`` benchmarks.

Run alone: ``python -m benchmarks.clientapp_import``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
HEAVY_MODULES = ("opacus", "sklearn", "pandas", "matplotlib", "scipy", "onnxruntime")
_PROBE = (
    "import json, sys, time\n"
    "started = time.perf_counter()\n"
    "import {module}\n"
    "seconds = time.perf_counter() - started\n"
    "print(json.dumps([seconds, [m for m in {heavy!r} if m in sys.modules]]))\n"
)


def import_seconds(
    module: str = "fedge.client.client_app",
    *,
    repeats: int = 3,
    app_root: Path | None = None,
) -> tuple[float, list[str]]:
    """Median wall seconds of ``import module`` in fresh interpreters.

    Parameters
    ----------
    module : str
        What to import.
    repeats : int
        Fresh processes to time; the median is returned (the machine is shared).
    app_root : Path, optional
        Import fedge from this source tree instead (e.g. an older checkout, to
        measure before and after in one run).

    Returns
    -------
    seconds : float
    heavy_loaded : list of str
        Which of :data:`HEAVY_MODULES` the import loaded.
    """
    root = app_root or REPO_ROOT
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = _PROBE.format(module=module, heavy=HEAVY_MODULES)
    times, heavy = [], []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        seconds, heavy = json.loads(out.strip().splitlines()[-1])
        times.append(seconds)
    return statistics.median(times), heavy


def main() -> dict[str, Any]:
    """Return the ClientApp's import time and what it loads."""
    seconds, heavy = import_seconds()
    return {
        "name": "clientapp_import",
        "clientapp_import_s": round(seconds, 3),
        "heavy_modules_loaded": heavy,
    }


if __name__ == "__main__":
    print(main())

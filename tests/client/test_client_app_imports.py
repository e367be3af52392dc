"""Importing the ClientApp loads only what every message needs (torch, Flower).

A deployed node pays the ClientApp's imports on every message (a fresh process
each), so heavy libraries must load inside the calls that need them.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("opacus", "sklearn", "pandas", "matplotlib", "scipy", "onnxruntime")


def test_importing_the_client_app_loads_no_heavy_library():
    code = (
        "import json, sys; import fedge.client.client_app; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []

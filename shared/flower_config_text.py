"""Flower's ``key=value ...`` config text, as ``--node-config`` and ``--run-config`` take it.

Each value is written as a TOML value (strings quoted, booleans lower-case), so
Flower parses back exactly the value given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tomli_w


def format_node_config(node_config: Mapping[str, Any]) -> str:
    """``{"data-path": "/x.csv", "partition-id": 0}`` -> ``data-path="/x.csv" partition-id=0``."""
    return " ".join(
        f"{k}={tomli_w.dumps({'v': v}).split('=', 1)[1].strip()}"
        for k, v in node_config.items()
    )

"""Strict JSON for the files a run leaves: values made safe, JSON Lines read back.

``metrics.jsonl``, the model card and reports are read by tools that reject
``NaN`` (it is not JSON), so every writer passes its values through
:func:`json_safe`; every reader of a JSON Lines file uses :func:`read_jsonl`,
which skips a line that is not a JSON object (a half-written last line after a
crash) instead of failing the whole file. The coordinator, the edge exporter
and the reports share these; ``shared`` is the one package all of them import.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def plain(value: Any) -> Any:
    """Return NumPy (and torch) scalars as Python ones; anything else unchanged."""
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, str | bytes):
        with contextlib.suppress(TypeError, ValueError):
            return item()
    return value


def json_safe(obj: Any) -> Any:
    """Return ``obj`` as strict JSON: NaN and infinities null, scalars plain.

    Mappings (keys as strings), lists and tuples are converted all the way down.
    """
    obj = plain(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def read_jsonl(
    path: Path, *, on_bad_line: Callable[[int, str], None] | None = None
) -> list[dict[str, Any]]:
    """Return the JSON objects of a JSON Lines file, one per line, in order.

    Parameters
    ----------
    path : Path
        The file; a missing file gives an empty list.
    on_bad_line : callable, optional
        Called with the line number (from 1) and the reason for each line that
        is not JSON; such a line is skipped either way. Lines holding JSON
        that is not an object are skipped silently.
    """
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            if on_bad_line is not None:
                on_bad_line(number, str(e))
            continue
        if isinstance(value, dict):
            records.append(value)
    return records

"""Modules imported on first use, so importing fedge's apps stays cheap.

A deployed node runs the ClientApp in a fresh process for every message, and
whatever its modules import at the top is paid on every message: pandas
(~0.4 s), scikit-learn (~1.1 s) and Opacus (~1 s) are only needed by some
messages (a node reading a CSV, a DP round's first validation). A module
written ``pd = lazy_module("pandas")`` keeps its code unchanged (``pd.read_csv``
…) and loads pandas the first time an attribute is read.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands in for a module until an attribute is first read.

    Parameters
    ----------
    name : str
        The module's import name, e.g. ``"sklearn.metrics"``.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        """Import the module on first use, then read ``attribute`` from it."""
        # Only called for attributes this proxy lacks, i.e. the module's own.
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attribute)

    def __repr__(self) -> str:
        """Name the module and whether it was imported yet."""
        state = "loaded" if self._module is not None else "not loaded yet"
        return f"<lazy module {self._name!r} ({state})>"


def lazy_module(name: str) -> Any:
    """Return a stand-in for module ``name`` that imports it on first attribute access."""
    return LazyModule(name)

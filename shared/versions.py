"""Versions of the packages a result depends on, recorded with every run."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata

TRACKED_PACKAGES = ("fedge", "flwr", "torch", "opacus", "onnx", "onnxruntime", "numpy")


def package_versions(names: Sequence[str] = TRACKED_PACKAGES) -> dict[str, str]:
    """Installed version of each package named (``"not installed"`` if absent).

    Parameters
    ----------
    names : sequence of str, default :data:`TRACKED_PACKAGES`
        Distribution names, in the order the result lists them.
    """
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions

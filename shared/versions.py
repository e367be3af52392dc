"""Versions of the packages a result depends on, recorded with every run."""

from __future__ import annotations

from importlib import metadata

TRACKED_PACKAGES = ("fedge", "flwr", "torch", "opacus", "onnx", "onnxruntime", "numpy")


def package_versions() -> dict[str, str]:
    """Installed version of each tracked package (``"not installed"`` if absent)."""
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions

"""A throw-away copy of the fedge app: with fault components, or a user's model file.

The production ``pyproject.toml`` declares neither the ``fault-*`` keys nor the
fault components, and ``flwr run --run-config`` accepts only declared keys. So a
scenario with faults submits a copy: the packages, ``pyproject.toml`` (with
``fedge.simulations.fault_injection`` as both components and the ``fault-*`` keys
added to ``[tool.flwr.app.config]``) and the README. Nothing else is copied
(no ``.venv``, ``runs`` or ``.git``), and the original is never touched.

A ``.py`` file given as the model (``--model nets.py:Net``) travels the same
way: copied into the app under :func:`fedge.shared.model_reference.shipped_module_name`
of its reference, so the app Flower ships to every simulation worker carries it
and each imports that copy (:func:`ship_model_file`).
"""

from __future__ import annotations

import fnmatch
import shutil
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from fedge.shared.errors import FedgeError
from fedge.shared.model_reference import model_file, shipped_module_name
from fedge.simulations.fault_config import FaultConfig

CLIENT_COMPONENT = "fedge.simulations.fault_injection:app"
SERVER_COMPONENT = "fedge.simulations.fault_injection:server_app"
_EXTRA_FILES = ("README.md", "LICENSE")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def write_fault_app(app_dir: Path, dest: Path, faults: FaultConfig) -> Path:
    """Copy the app in ``app_dir`` to ``dest`` with the fault components and keys.

    Parameters
    ----------
    app_dir : Path
        The fedge project (holds ``pyproject.toml`` and the packages).
    dest : Path
        An empty or absent directory; it becomes the app to submit.
    faults : FaultConfig
        Its values become the copy's ``fault-*`` defaults.

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    FedgeError
        If ``app_dir`` has no ``pyproject.toml`` or no packages to copy.
    """
    return write_app_copy(app_dir, dest, faults=faults)


def write_app_copy(
    app_dir: Path, dest: Path, *, faults: FaultConfig | None = None
) -> Path:
    """Copy the app in ``app_dir`` to ``dest``; with ``faults``, their components and keys.

    Raises
    ------
    FedgeError
        If ``app_dir`` has no ``pyproject.toml`` or no packages to copy.
    """
    pyproject_path = app_dir / "pyproject.toml"
    if not pyproject_path.is_file():
        raise FedgeError(f"cannot build the app to submit: no {pyproject_path}")
    pyproject = tomllib.loads(pyproject_path.read_text())
    packages = _package_dirs(app_dir, pyproject)
    if not packages:
        raise FedgeError(
            f"cannot build the app to submit: no packages found in {app_dir}"
        )
    dest.mkdir(parents=True, exist_ok=True)
    for package in packages:
        shutil.copytree(package, dest / package.name, ignore=_IGNORE)
    for name in _EXTRA_FILES:
        if (app_dir / name).is_file():
            shutil.copy2(app_dir / name, dest / name)
    if faults is not None:
        flwr_app = pyproject["tool"]["flwr"]["app"]
        flwr_app["components"] = {
            "serverapp": SERVER_COMPONENT,
            "clientapp": CLIENT_COMPONENT,
        }
        flwr_app["config"] = {**flwr_app["config"], **faults.to_run_config()}
    (dest / "pyproject.toml").write_text(tomli_w.dumps(pyproject))
    return dest


def ship_model_file(app: Path, reference: str) -> Path:
    """Copy the ``.py`` file of ``reference`` into the app copy ``app``; return the copy.

    Byte for byte, so its SHA-256 (the model's identity) is the user's file's.

    Raises
    ------
    FedgeError
        If ``reference`` names no ``.py`` file, or the file is missing.
    """
    source = model_file(reference)
    if source is None or not source.is_file():
        raise FedgeError(f"model {reference!r}: no .py file to ship with the app")
    return Path(shutil.copyfile(source, app / f"{shipped_module_name(reference)}.py"))


def _package_dirs(app_dir: Path, pyproject: dict[str, Any]) -> list[Path]:
    """Top-level package folders matching setuptools' ``packages.find.include``."""
    find = (
        pyproject.get("tool", {})
        .get("setuptools", {})
        .get("packages", {})
        .get("find", {})
    )
    patterns = find.get("include", ["*"])
    return sorted(
        path
        for path in app_dir.iterdir()
        if path.is_dir()
        and (path / "__init__.py").is_file()
        and any(fnmatch.fnmatch(path.name, p) for p in patterns)
    )

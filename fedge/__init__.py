"""fedge: federated and edge learning with Flower, Opacus and ONNX Runtime.

The public Python API, for scripts and notebooks; the ``fedge`` command line
calls the same functions:

- :func:`simulate` runs a federation of virtual clients and returns its :class:`Run`;
- :class:`Run` reads any run folder, simulated or deployed, running or finished;
- :func:`export` and :func:`verify` make and check a run's device artefacts;
- :func:`plan_privacy` gives a node's DP-SGD plan (σ, sampling rate, steps);
- :class:`EdgeModel` predicts on a device with ONNX Runtime and NumPy only.

Every part of fedge is installed under this one name (``fedge.server``,
``fedge.client``, ``fedge.shared``, ``fedge.edge_export``,
``fedge.simulations``, ``fedge.reports``, ``fedge.cli``), so a user's own
``client.py``, ``server.py`` or ``shared.py`` beside a script cannot hide them.

Importing ``fedge`` imports nothing heavy: each public name is loaded on first
use (PEP 562), so ``fedge.EdgeModel`` on a device loads neither torch, Flower
nor pandas.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the real types, for type checkers and IDEs
    from fedge.api import export, simulate, verify
    from fedge.edge_export.manifest import Manifest, VerifyReport
    from fedge.edge_export.runtime import EdgeModel, Prediction
    from fedge.run import Run
    from fedge.shared.errors import FedgeError
    from fedge.shared.privacy_plan import PrivacyPlan, plan_privacy

__version__ = "0.1.0"

# Public name -> the module that defines it, imported on first use.
_LAZY_NAMES = {
    "simulate": "fedge.api",
    "export": "fedge.api",
    "verify": "fedge.api",
    "Run": "fedge.run",
    "plan_privacy": "fedge.shared.privacy_plan",
    "PrivacyPlan": "fedge.shared.privacy_plan",
    "Manifest": "fedge.edge_export.manifest",
    "VerifyReport": "fedge.edge_export.manifest",
    "EdgeModel": "fedge.edge_export.runtime",
    "Prediction": "fedge.edge_export.runtime",
    "FedgeError": "fedge.shared.errors",
}

__all__ = [
    "EdgeModel",
    "FedgeError",
    "Manifest",
    "Prediction",
    "PrivacyPlan",
    "Run",
    "VerifyReport",
    "__version__",
    "export",
    "plan_privacy",
    "simulate",
    "verify",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module the first time the name is read (PEP 562)."""
    module = _LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'fedge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later reads skip this function
    return value


def __dir__() -> list[str]:
    """List the public names with the module's own, loaded or not."""
    return sorted({*globals(), *__all__})


def _add_checkout_folders() -> None:
    # In the repository the packages are top-level folders, which fedge/ links
    # to. A bundle built by `flwr build` from the checkout does not follow those
    # links, so the folders beside this one are looked up as well there.
    checkout = Path(__file__).resolve().parent.parent
    if (
        not (Path(__file__).parent / "server").is_dir()
        and (checkout / "server" / "server_app.py").is_file()
    ):
        __path__.append(str(checkout))


_add_checkout_folders()

"""fedge: federated and edge learning with Flower, Opacus and ONNX Runtime.

Every part of fedge is installed under this one name (``fedge.server``,
``fedge.client``, ``fedge.shared``, ``fedge.edge_export``,
``fedge.simulations``, ``fedge.cli``), so a user's own ``client.py``,
``server.py`` or ``shared.py`` beside a script cannot hide them.

Importing ``fedge`` imports nothing heavy: the device runtime
(``fedge.edge_export.runtime``) must load without torch or Flower.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"


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

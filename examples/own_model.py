"""Train your own PyTorch model with fedge, then export it for devices.

``make_model`` below is what fedge calls on every virtual client:
``make_model(input_shape=..., num_classes=...)`` must return an ``nn.Module``
giving logits. fedge ships this file to each worker and imports it there, so
its top level defines the model only; the run starts under ``__main__``.
Train it on the built-in digits (8x8 images), then, with ``--export``, write
the verified ONNX files :mod:`predict_on_device` loads.

Run: ``python examples/own_model.py --out DIR [--export]`` (default: the
``FEDGE_EXAMPLES_OUT`` environment variable, else ``examples/out``).
"""

from __future__ import annotations

import math

from torch import Tensor, nn


class TinyNet(nn.Module):
    """Two linear layers over the flattened input: your architecture goes here."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits of a batch."""
        return self.layers(x)


def make_model(*, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build the model for the data's shape, as fedge asks for it."""
    return TinyNet(math.prod(input_shape), num_classes)


def main(argv: list[str] | None = None) -> None:
    """Simulate with ``make_model``; with ``--export``, export and verify."""
    import argparse
    import os
    import time
    from pathlib import Path

    import fedge

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("FEDGE_EXAMPLES_OUT", "examples/out")),
    )
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--export", action="store_true", help="export to ONNX and verify"
    )
    args = parser.parse_args(argv)

    run = fedge.simulate(
        model=f"{Path(__file__).resolve()}:make_model",
        dataset="digits",
        clients=args.clients,
        rounds=args.rounds,
        output_dir=args.out / "runs",
        run_name=time.strftime("own-model-%Y%m%d-%H%M%S"),
        set={"local-epochs": 1},
    )
    print(f"{run.name}: accuracy {run.accuracy:.4f}")
    if args.export:
        manifest = fedge.export(run)
        report = fedge.verify(run)
        print(f"exported {sorted(manifest.artefacts)}; verified: {report.ok}")
    print(f"run folder: {run.path}")


if __name__ == "__main__":
    main()

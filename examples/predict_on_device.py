"""Predict with an exported model on a device: ONNX Runtime and NumPy only.

:class:`fedge.EdgeModel` loads ``model.int8.onnx`` (else ``model.onnx``) of an
exported run folder, checks its hash against the ``manifest.json`` beside it,
encodes raw inputs as the model was trained on them and predicts. Neither
torch nor Flower is imported: on a device, ``pip install -r
requirements-edge.txt`` and fedge without its dependencies (``pip install
--no-deps .``), or the ``edge_export/runtime/`` folder copied alone, is all it
needs.

Run: ``python examples/predict_on_device.py RUN_DIR INPUTS`` where ``INPUTS``
is a ``.csv``, ``.npz`` (array ``x``) or ``.parquet`` file of raw rows, e.g.
the run folder of ``own_model.py --export`` and some 8x8 digit images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import fedge


def main(argv: list[str] | None = None) -> None:
    """Load the run's model, predict the inputs, print one line per row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="an exported run folder")
    parser.add_argument("inputs", type=Path, help="raw inputs: .csv, .npz, .parquet")
    args = parser.parse_args(argv)

    int8 = args.run_dir / "model.int8.onnx"
    model = fedge.EdgeModel.load(
        int8 if int8.is_file() else args.run_dir / "model.onnx"
    )
    prediction = model.predict(args.inputs)  # a file path, an array or a DataFrame
    for row, (label, probabilities) in enumerate(
        zip(prediction.labels, prediction.probabilities, strict=True)
    ):
        print(f"row {row}: {label} (p = {probabilities.max():.3f})")
    print("torch imported:", "torch" in sys.modules)


if __name__ == "__main__":
    main()

"""``make demo``: a private federated run on the built-in digits data, to a device.

10 virtual clients, IID partitions, FedAvg, and DP-SGD on every client with a
budget of ε = 8 for the whole run (δ below 1/n per client). The finished model is
exported to ONNX (and int8), then run by the torch-free device runtime on the
held-out digits, exactly as a device would get them: raw 0–16 pixel values,
encoded by the preprocessing stored inside the ONNX file.
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import numpy as np

from fedge.edge_export.runtime import EdgeModel
from fedge.shared.datasets import load_builtin
from fedge.shared.errors import FedgeError
from fedge.shared.run_folder import (
    EPSILON_MAX,
    MANIFEST_FILE,
    ONNX_FP32_FILE,
    ONNX_INT8_FILE,
    read_model_info,
    read_status,
)
from fedge.simulations.simulate import simulate

NUM_CLIENTS = 10
# DP settings for ~120 examples per client, chosen in the tuning sweeps behind
# the privacy–utility study (studies/privacy_utility.md; its tuned scenario
# dp-digits-10-clients does as well): tanh keeps clipped per-example gradients
# informative, and 10 rounds of 5 local epochs average the clients' noise.
DEMO_SETTINGS = {
    "dp-mode": "sample",
    "target-epsilon": 8.0,
    "activation": "tanh",
    "num-server-rounds": 10,
    "local-epochs": 5,
    "batch-size": 32,  # with these epochs and lr; "auto" under DP is one full batch
    "learning-rate": 0.05,
    "export-onnx": True,
}
# Measured 0.84-0.90 over 6 runs on 2026-12-05 (0.86-0.91 before): the DP noise
# is not seeded, by design, so the bar sits below the spread: a run this low
# means something broke, not that the noise was unkind (0.85 failed 2 of 6).
EXPECTED_ACCURACY = 0.80


def main() -> int:
    """Run the demo; exit 0 when it completed and met the expected accuracy."""
    accuracies: list[float] = []

    def on_model_ready(run_dir: Path) -> None:
        # As soon as the run folder says complete (the model saved and
        # exported), while Flower shuts the run down and the report is written.
        accuracies.append(_print_result(run_dir))
        accuracies.append(_run_on_device(run_dir))

    try:
        run_dir = simulate(
            DEMO_SETTINGS,
            num_clients=NUM_CLIENTS,
            output_dir=Path("runs"),
            run_name="",
            on_complete=on_model_ready,
        )
    except FedgeError as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    print(f"Run folder: {run_dir.resolve()}")
    return 0 if len(accuracies) == 2 and min(accuracies) >= EXPECTED_ACCURACY else 1


def _print_result(run_dir: Path) -> float:
    """Print the final accuracy and privacy guarantee of a completed run; return the accuracy."""
    accuracy = float(read_status(run_dir)["final_accuracy"])
    privacy = read_model_info(run_dir).privacy
    verdict = "meets" if accuracy >= EXPECTED_ACCURACY else "is BELOW"
    print()
    print(
        f"Final central accuracy on the digits test split: {accuracy:.4f} "
        f"({verdict} the expected {EXPECTED_ACCURACY:.2f} for this privacy budget)"
    )
    print(
        f"Privacy: every client's cumulative ε ≤ {privacy.epsilon_max:.2f} at "
        f"δ = {privacy.delta:.0e} (DP-SGD, noise multiplier "
        f"{privacy.noise_multiplier:.2f}, clipping norm {privacy.max_grad_norm:g})",
        flush=True,
    )
    return accuracy


def _run_on_device(run_dir: Path) -> float:
    """Predict the test digits with the exported model through the device runtime."""
    int8 = run_dir / ONNX_INT8_FILE
    model_path = int8 if int8.is_file() else run_dir / ONNX_FP32_FILE
    model = EdgeModel.load(model_path)
    test = load_builtin("digits", "test")
    # What a device holds: raw 8x8 images with pixel values 0..16.
    raw_pixels = np.rint(test.x * model.metadata.preprocessing["pixel_scale"])
    prediction = model.predict(raw_pixels.reshape(len(test), -1))
    device_accuracy = float(np.mean(prediction.indices == test.y))
    privacy = model.metadata.privacy
    epsilon = privacy.get(EPSILON_MAX)
    guarantee = (
        f"(ε = {epsilon:.2f}, δ = {privacy.get('delta'):.1e}, {privacy['dp-mode']}-level DP)"
        if epsilon is not None
        else f"(dp-mode {privacy['dp-mode']}: no privacy guarantee)"
    )
    manifest = json.loads((run_dir / MANIFEST_FILE).read_text())
    print(
        f"On device (onnxruntime + NumPy, no torch): {model_path.name}, "
        f"{model_path.stat().st_size / 1024:.1f} KiB, accuracy {device_accuracy:.4f} on "
        f"{len(test)} test digits; parity with PyTorch {manifest['parity']['max-abs-diff']:.1e} "
        f"{guarantee}"
    )
    return device_accuracy


if __name__ == "__main__":
    code = main()
    # Everything the demo started has ended: spare the interpreter's last full
    # garbage collection over torch's objects at exit (0.3 of its 0.4 s).
    gc.freeze()
    sys.exit(code)

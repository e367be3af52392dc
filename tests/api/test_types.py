"""The public names type-check from a user's script under ``mypy --strict``.

A consumer script uses every name in ``fedge.__all__``; mypy must accept it,
reveal each name as its real type (not ``Any``, which would accept anything),
and reject a second script that passes a wrong type, proving it checks.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import fedge

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

CONSUMER = """
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

import fedge


def notebook(out: Path) -> float | None:
    run: fedge.Run = fedge.simulate(
        clients=2, rounds=1, output_dir=out, dp_mode="sample",
        set={"local-epochs": 1}, progress=False,
    )
    status: str = run.status
    plots: dict[str, Figure] = run.plots()
    epsilons: dict[str, float] = run.epsilon_per_node
    card: dict[str, object] = run.model_card
    table = fedge.Run.compare([run, fedge.Run(out / "other")])
    print(status, plots, epsilons, card, table, run.metrics, run.clients, run.config)
    manifest: fedge.Manifest = fedge.export(run, quantize="dynamic")
    report: fedge.VerifyReport = fedge.verify(run, public_key=None)
    ok: bool = report.ok
    plan: fedge.PrivacyPlan = fedge.plan_privacy(
        num_examples=1000, batch_size=32, local_epochs=1, rounds=5,
        noise_multiplier=0.0, target_epsilon=8.0, target_delta=0.0,
        accountant="rdp",
    )
    sigma: float = plan.noise_multiplier
    model = fedge.EdgeModel.load(run.path / "model.onnx")
    prediction: fedge.Prediction = model.predict(np.zeros((1, 64)))
    version: str = fedge.__version__
    print(manifest, ok, sigma, prediction, version)
    try:
        fedge.Run(out / "missing")
    except fedge.FedgeError as e:
        print(e)
    return run.accuracy


if TYPE_CHECKING:
    reveal_type(fedge.simulate)
    reveal_type(fedge.export)
    reveal_type(fedge.verify)
    reveal_type(fedge.plan_privacy)
    reveal_type(fedge.Run)
    reveal_type(fedge.EdgeModel)
    reveal_type(fedge.Manifest)
    reveal_type(fedge.VerifyReport)
    reveal_type(fedge.PrivacyPlan)
    reveal_type(fedge.Prediction)
    reveal_type(fedge.FedgeError)
    reveal_type(fedge.__version__)
"""

MISUSE = """
import fedge

fedge.simulate(clients="two")
fedge.Run(3)
"""


# Each public name, in the consumer's reveal_type order -> the public class it
# builds or returns (its own for a class), or "str".
REVEALED = {
    "simulate": "Run",
    "export": "Manifest",
    "verify": "VerifyReport",
    "plan_privacy": "PrivacyPlan",
    "Run": "Run",
    "EdgeModel": "EdgeModel",
    "Manifest": "Manifest",
    "VerifyReport": "VerifyReport",
    "PrivacyPlan": "PrivacyPlan",
    "Prediction": "Prediction",
    "FedgeError": "FedgeError",
    "__version__": "str",
}


def full_name(public: str) -> str:
    """The defining module's name of a public class, as mypy names its type."""
    if public == "str":
        return "str"
    cls = getattr(fedge, public)
    return f"{cls.__module__}.{cls.__qualname__}"


def test_a_consumer_script_type_checks_under_mypy_strict(tmp_path):
    (tmp_path / "consumer.py").write_text(CONSUMER)
    (tmp_path / "misuse.py").write_text(MISUSE)

    # From the checkout, whose [tool.mypy] the project's own check uses; only
    # the two scripts' own errors are reported.
    done = subprocess.run(
        [
            sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
            "--no-error-summary", "--show-error-codes",
            str(tmp_path / "consumer.py"), str(tmp_path / "misuse.py"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip

    lines = done.stdout.splitlines()
    consumer_errors = [ln for ln in lines if "consumer.py" in ln and "error:" in ln]
    assert consumer_errors == [], done.stdout
    revealed = [
        m.group(1)
        for ln in lines
        if (m := re.search(r'consumer\.py:\d+: note: Revealed type is "(.*)"', ln))
    ]
    assert len(revealed) == len(REVEALED), done.stdout
    for (name, returned), shown in zip(REVEALED.items(), revealed, strict=True):
        expected = full_name(returned)
        assert shown == expected or shown.endswith(f") -> {expected}"), (name, shown)
    assert set(REVEALED) == set(fedge.__all__)
    assert "clients: int | None =" in revealed[0] and "progress: bool =" in revealed[0]
    misuse = [ln for ln in lines if "misuse.py" in ln and "error:" in ln]
    assert any('"clients" to "simulate"' in ln for ln in misuse), done.stdout
    assert any('"Run"' in ln and "int" in ln for ln in misuse), done.stdout

"""The privacy–utility study's grid: data sets, rows, privacy levels, seeds and goals.

What :mod:`fedge.studies.privacy_utility` runs and
:mod:`fedge.studies.privacy_utility_table` reports on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedge.shared.errors import FedgeError
from fedge.simulations.scenario_file import SCENARIOS_DIR
from fedge.studies.study_cell import ROOT, epsilon_slug

ROW_SCENARIOS_DIR = SCENARIOS_DIR / "privacy-utility"


@dataclass(frozen=True)
class StudyDataset:
    """One column group of the study: a data set split over a number of clients."""

    name: str
    dataset: str
    clients: int
    partitioning: str = "iid"
    dirichlet_alpha: float = 0.5

    def overrides(self) -> dict[str, Any]:
        """Return the run-config keys that select and split this data set."""
        keys: dict[str, Any] = {
            "dataset": self.dataset,
            "partitioning": self.partitioning,
        }
        if self.partitioning == "dirichlet":
            keys["dirichlet-alpha"] = self.dirichlet_alpha
        return keys

    def flags(self) -> str:
        """Return the same as ``fedge simulate`` flags."""
        text = f"--dataset {self.dataset} --clients {self.clients}"
        if self.partitioning != "iid":
            text += f" --partitioning {self.partitioning}"
        if self.partitioning == "dirichlet":
            text += f" --alpha {self.dirichlet_alpha:g}"
        return text


DATASETS = {
    d.name: d
    for d in (
        StudyDataset("digits-3", "digits", 3),
        StudyDataset("digits-10", "digits", 10),
        StudyDataset("basic-motions", "basic-motions", 4, "dirichlet"),
        StudyDataset("pickup-gesture", "pickup-gesture", 4, "dirichlet"),
    )
}
# Rows trained with DP, in the table's order; each is ROW_SCENARIOS_DIR/<row>.toml.
DP_ROWS = ("old-settings", "defaults", "ema", "augment", "fixed-features", "best")
NO_DP_ROW = "no-dp"
ROWS = (*DP_ROWS, NO_DP_ROW)
ROW_LABELS = {
    "old-settings": "old settings (relu, batch 32, 5 epochs, lr 0.05)",
    "defaults": "defaults (only dp-mode = sample)",
    "ema": "defaults + EMA 0.9",
    "augment": "defaults + augmentation K = 4",
    "fixed-features": "defaults + fixed features (random-conv-linear)",
    "best": "all three",
    "no-dp": "no DP (defaults)",
}
EPSILONS = (1.0, 3.0, 8.0)
SEEDS = (0, 1, 2)
# The goals: (data set, ε) -> mean accuracy over 3 seeds to reach.
GOALS = {
    ("digits-10", 8.0): 0.94,
    ("basic-motions", 8.0): 0.80,
    ("pickup-gesture", 8.0): 0.30,
    ("digits-3", 3.0): 0.92,
}
# --quick: every run, but short enough only to prove the study works.
QUICK_SETTINGS = {"num-server-rounds": 2}
CSV_COLUMNS = (
    "dataset",
    "row",
    "target_epsilon",
    "seed",
    "state",
    "accuracy",
    "epsilon",
    "noise_multiplier",
    "examples_per_client",
    "wall_time_s",
    "run_dir",
    "error",
)
KEY_COLUMNS = ["dataset", "row", "target_epsilon", "seed"]


@dataclass(frozen=True)
class StudyRun:
    """One run of the grid."""

    dataset: str
    row: str
    target_epsilon: float  # inf: no DP
    seed: int

    @property
    def name(self) -> str:
        """The run folder: ``digits-10-defaults-eps8-seed0``."""
        return (
            f"{self.dataset}-{self.row}-{epsilon_slug(self.target_epsilon)}"
            f"-seed{self.seed}"
        )


def row_scenario(row: str) -> Path:
    """Return the scenario file of a row.

    Raises
    ------
    FedgeError
        If ``row`` is not one of :data:`ROWS`.
    """
    if row not in ROWS:
        raise FedgeError(
            f"Unknown study row {row!r}: the rows are {', '.join(ROWS)} "
            f"(scenario files in {ROW_SCENARIOS_DIR})."
        )
    return ROW_SCENARIOS_DIR / f"{row}.toml"


def reproduce_command(row: str, dataset: str, epsilon: float, seed: int = 0) -> str:
    """Return the ``fedge simulate`` command that reruns one run of the grid."""
    path = row_scenario(row).relative_to(ROOT)
    text = f"fedge simulate --scenario {path} {DATASETS[dataset].flags()}"
    if not math.isinf(epsilon):
        text += f" --target-epsilon {epsilon:g}"
    return text + f" --set model-seed={seed} --set sampler-seed={seed}"

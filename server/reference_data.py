"""The coordinator's held-out data: central evaluation set and preprocessing.

For a built-in dataset this is its fixed test split; for ``dataset = "file"`` it
is the coordinator's own ``eval-data-path`` file, on which the preprocessing the
whole federation applies (feature order, categories, means and scales) is fitted
and then sent to every node with the model.
"""

from __future__ import annotations

from fedge.shared.config import DATASET_FILE, DataConfig
from fedge.shared.datasets import Dataset, fit_file, load_builtin


def load_reference_data(data: DataConfig) -> Dataset:
    """Return the central evaluation dataset (with its fitted preprocessing)."""
    if data.dataset == DATASET_FILE:
        return fit_file(
            data.eval_data_path, label_column=data.label_column, impute=data.impute
        )
    return load_builtin(data.dataset, "test")

"""How evenly a model serves its clients: the summary of per-client accuracies.

A federated model's central accuracy is an average over people and sites that
differ. These figures say whether it works for every client, or only on
average. Each client counts once, whatever its size: the question is how the
model serves a site, not an example.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedge.shared.run_folder import (
    CLIENT_ACCURACY_MEAN,
    CLIENT_ACCURACY_P10,
    CLIENT_ACCURACY_SPREAD,
    CLIENT_ACCURACY_WORST,
    CLIENT_SHARE_BELOW,
    CLIENTS_EVALUATED,
)

WORST_PERCENTILE = 10  # the "10th percentile" column: the worst-served tenth


def fairness_summary(
    accuracies: Sequence[float], *, threshold: float
) -> dict[str, float]:
    """Summarise per-client accuracies for one round's ``metrics.csv`` row.

    Parameters
    ----------
    accuracies : sequence of float
        One accuracy per evaluated client, in [0, 1].
    threshold : float
        Accuracy below which a client counts as poorly served
        (``fairness-threshold``).

    Returns
    -------
    dict
        ``clients-evaluated``; the unweighted ``client-accuracy-mean``; the
        ``-worst`` (minimum); ``-p10``, the 10th percentile with NumPy's
        default linear interpolation; ``-spread`` (max - min); and
        ``client-share-below-threshold``, the fraction of clients strictly
        below ``threshold``. Empty when no client was evaluated.
    """
    values = np.asarray(accuracies, dtype=np.float64)
    if values.size == 0:
        return {}
    return {
        CLIENTS_EVALUATED: int(values.size),
        CLIENT_ACCURACY_MEAN: float(values.mean()),
        CLIENT_ACCURACY_WORST: float(values.min()),
        CLIENT_ACCURACY_P10: float(np.percentile(values, WORST_PERCENTILE)),
        CLIENT_ACCURACY_SPREAD: float(values.max() - values.min()),
        CLIENT_SHARE_BELOW: float(np.mean(values < threshold)),
    }

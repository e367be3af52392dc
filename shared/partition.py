"""Seeded, offline partitioners: split one dataset's indices among clients.

Pure functions on label arrays. Each returns one sorted ``int64`` index array
per partition; together they cover every example exactly once. The same seed
always gives the same split.

- ``iid``: a random permutation cut into near-equal parts.
- ``dirichlet``: label skew; for every class, the shares going to each
  partition are drawn from Dir(α) (Hsu, Qi and Brown, 2019, "Measuring the
  effects of non-identical data distribution for federated visual
  classification"). Small α gives each client few classes; large α tends to IID.
- ``shards``: the pathological split of McMahan et al. (2017, "Communication-
  efficient learning of deep networks from decentralized data"): sort by label,
  cut into ``num_partitions * shards_per_client`` shards, deal each client
  ``shards_per_client`` of them at random.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedge.shared import keys
from fedge.shared.errors import DataError
from fedge.shared.lazy_import import lazy_module

if TYPE_CHECKING:
    import pandas as pd
else:
    # pandas costs ~0.4 s to import; a node reading cached arrays never needs it.
    pd = lazy_module("pandas")

PARTITIONINGS = ("iid", "dirichlet", "shards")


def _check_partitions(num_partitions: int, num_examples: int) -> None:
    if isinstance(num_partitions, bool) or not isinstance(
        num_partitions, int | np.integer
    ):
        raise DataError(f"num_partitions must be an int >= 1, got {num_partitions!r}")
    if num_partitions < 1:
        raise DataError(f"num_partitions must be >= 1, got {num_partitions}")
    if num_examples < num_partitions:
        raise DataError(
            f"cannot split {num_examples} examples into {num_partitions} "
            "non-empty partitions; use fewer partitions (clients) or more data"
        )


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"labels must be a 1-D array, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"labels must be integer class indices, got dtype {labels.dtype}"
        )
    if labels.size and labels.min() < 0:
        raise DataError(
            f"labels must be non-negative class indices, got {labels.min()}"
        )
    return labels


def _sorted(parts: list[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def partition_iid(
    num_examples: int, num_partitions: int, *, seed: int
) -> list[np.ndarray]:
    """Shuffle ``range(num_examples)`` and cut it into near-equal parts.

    Part sizes differ by at most one.

    Raises
    ------
    DataError
        ``num_partitions < 1`` or more partitions than examples.
    """
    _check_partitions(num_partitions, num_examples)
    order = np.random.default_rng(seed).permutation(num_examples)
    return _sorted(np.array_split(order, num_partitions))


def partition_dirichlet(
    labels: np.ndarray,
    num_partitions: int,
    *,
    alpha: float,
    seed: int,
    min_partition_size: int = 1,
    max_retries: int = 100,
) -> list[np.ndarray]:
    """Label-skewed split: per class, partition shares ~ Dir(α).

    Draws are repeated (from the same seeded generator) until every partition
    holds at least ``min_partition_size`` examples.

    Parameters
    ----------
    labels : ndarray of int, shape ``(n,)``
    num_partitions : int
    alpha : float
        Concentration, > 0. Smaller is more skewed.
    seed : int
    min_partition_size : int
        Smallest acceptable partition.
    max_retries : int
        Draws to try before giving up.

    Raises
    ------
    DataError
        Bad parameters, too few examples, or no acceptable draw within
        ``max_retries``.
    """
    labels = _check_labels(labels)
    if not alpha > 0:
        raise DataError(f"alpha (dirichlet-alpha) must be > 0, got {alpha}")
    if min_partition_size < 1:
        raise DataError(f"min_partition_size must be >= 1, got {min_partition_size}")
    if max_retries < 1:
        raise DataError(f"max_retries must be >= 1, got {max_retries}")
    _check_partitions(num_partitions, len(labels))
    if len(labels) < num_partitions * min_partition_size:
        raise DataError(
            f"cannot split {len(labels)} examples into {num_partitions} partitions "
            f"of at least {min_partition_size} examples each"
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    members = [np.flatnonzero(labels == c) for c in classes]
    smallest = 0
    for _ in range(max_retries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for idx in members:
            idx = rng.permutation(idx)
            shares = rng.dirichlet(np.full(num_partitions, float(alpha)))
            cuts = np.round(np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for p, chunk in enumerate(np.split(idx, cuts)):
                parts[p].append(chunk)
        merged = [np.concatenate(p) for p in parts]
        smallest = min(len(p) for p in merged)
        if smallest >= min_partition_size:
            return _sorted(merged)
    raise DataError(
        f"Dirichlet split with alpha={alpha} left a partition with fewer than "
        f"{min_partition_size} examples in all {max_retries} draws (smallest in the "
        f"last draw: {smallest}); use a larger alpha or fewer clients"
    )


def partition_shards(
    labels: np.ndarray, num_partitions: int, *, shards_per_client: int, seed: int
) -> list[np.ndarray]:
    """Pathological non-IID split by label shards (McMahan et al., 2017).

    Examples are sorted by label (random order within a label), cut into
    ``num_partitions * shards_per_client`` near-equal shards, and each client
    gets ``shards_per_client`` shards chosen at random. A client thus sees at
    most about ``shards_per_client`` labels (one more where a shard straddles
    a label boundary).

    Raises
    ------
    DataError
        Bad parameters, or fewer examples than shards.
    """
    labels = _check_labels(labels)
    if isinstance(shards_per_client, bool) or shards_per_client < 1:
        raise DataError(
            f"shards_per_client must be an int >= 1, got {shards_per_client!r}"
        )
    _check_partitions(num_partitions, len(labels))
    num_shards = num_partitions * shards_per_client
    if len(labels) < num_shards:
        raise DataError(
            f"cannot cut {len(labels)} examples into {num_shards} non-empty shards "
            f"({num_partitions} partitions × {shards_per_client} shards each); "
            "use fewer clients or fewer shards per client"
        )
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(labels))
    # Stable sort of a shuffled order: grouped by label, random within a label.
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, num_shards)
    dealt = rng.permutation(num_shards).reshape(num_partitions, shards_per_client)
    return _sorted([np.concatenate([shards[s] for s in row]) for row in dealt])


def partition_indices(
    labels: np.ndarray,
    num_partitions: int,
    scheme: str,
    *,
    seed: int,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    min_partition_size: int = 1,
) -> list[np.ndarray]:
    """Split by the named scheme (one of :data:`PARTITIONINGS`).

    ``alpha`` and ``min_partition_size`` apply to ``dirichlet`` only (``iid``
    and ``shards`` sizes follow from the data), ``shards_per_client`` to
    ``shards`` only.

    Raises
    ------
    DataError
        Unknown scheme, or the chosen partitioner's errors.
    """
    if scheme == "iid":
        return partition_iid(len(labels), num_partitions, seed=seed)
    if scheme == "dirichlet":
        return partition_dirichlet(
            labels,
            num_partitions,
            alpha=alpha,
            seed=seed,
            min_partition_size=min_partition_size,
        )
    if scheme == "shards":
        return partition_shards(
            labels, num_partitions, shards_per_client=shards_per_client, seed=seed
        )
    raise DataError(f"unknown partitioning {scheme!r}; valid: {list(PARTITIONINGS)}")


def partition_stats(
    labels: np.ndarray, partitions: list[np.ndarray], num_classes: int
) -> pd.DataFrame:
    """Count examples per label in each partition.

    Returns
    -------
    DataFrame
        One row per partition with columns ``partition-id``, ``num-examples``
        and ``label-0 .. label-{num_classes-1}``.
    """
    labels = _check_labels(labels)
    if labels.size and labels.max() >= num_classes:
        raise DataError(
            f"labels must be < num_classes={num_classes}, got {labels.max()}"
        )
    rows = []
    for pid, idx in enumerate(partitions):
        counts = np.bincount(
            labels[np.asarray(idx, dtype=np.int64)], minlength=num_classes
        )
        row = {keys.PARTITION_ID: pid, keys.NUM_EXAMPLES: len(idx)}
        row.update({f"label-{k}": int(counts[k]) for k in range(num_classes)})
        rows.append(row)
    columns = [keys.PARTITION_ID, keys.NUM_EXAMPLES] + [
        f"label-{k}" for k in range(num_classes)
    ]
    return pd.DataFrame(rows, columns=columns)

"""Classification metrics from labels and predicted probabilities.

Computed with NumPy from the confusion matrix and the ranks of the scores,
by the definitions scikit-learn uses (macro averages over the classes present
in labels or predictions, a class never predicted scoring precision 0, ROC-AUC
one-vs-rest with ties counted half); ``tests/shared/test_metrics.py`` pins
every figure to scikit-learn's own. Not scikit-learn itself because its import
(with the SciPy it pulls in) costs about 0.9 s of CPU, and the coordinator's
first central evaluation and the model card sat behind it on every run.
"""

from __future__ import annotations

import numpy as np


def predicted_classes(probabilities: np.ndarray) -> np.ndarray:
    """Most probable class per row; -1 for a row holding NaN or inf.

    A diverged model can output NaN/inf: such rows count as wrong predictions
    rather than crashing the evaluation.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    finite = np.isfinite(probabilities).all(axis=1)
    return np.where(finite, np.nan_to_num(probabilities).argmax(axis=1), -1)


def accuracy(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """Share of rows whose most probable class is the label (0 for no rows)."""
    y_true = np.asarray(y_true)
    if y_true.size == 0:
        return 0.0
    return float(np.mean(predicted_classes(probabilities) == y_true))


def classification_metrics(
    y_true: np.ndarray, probabilities: np.ndarray
) -> dict[str, float]:
    """Return accuracy, macro precision/recall/F1 and ROC-AUC.

    Parameters
    ----------
    y_true : ndarray of shape (n,)
        Integer class labels.
    probabilities : ndarray of shape (n, num_classes)
        Predicted class probabilities (rows sum to 1).

    Returns
    -------
    dict
        ``accuracy``, ``precision``, ``recall``, ``f1`` (macro averages over the
        classes present in ``y_true`` or predicted), and ``roc-auc`` (binary, or one-vs-rest macro for multiclass).
        ROC-AUC is NaN when ``y_true`` holds a single class, where it is undefined.
    """
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    # Rows with NaN/inf count as wrong (class -1), and ROC-AUC is then undefined.
    finite = np.isfinite(probabilities).all(axis=1)
    y_pred = predicted_classes(probabilities)
    # Macro averages run over the classes present in labels or predictions, as in
    # scikit-learn: a non-IID node's test split lacks classes, which should not
    # count as zeros.
    labels = np.union1d(y_true, y_pred[finite])
    precision, recall = _precision_recall(y_true, y_pred, labels)
    f1 = np.divide(
        2 * precision * recall,
        precision + recall,
        out=np.zeros_like(precision),
        where=(precision + recall) > 0,
    )
    return {
        "accuracy": accuracy(y_true, probabilities),
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
        "roc-auc": roc_auc(y_true, probabilities) if finite.all() else float("nan"),
    }


def roc_auc(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """ROC-AUC: binary on the positive class, else one-vs-rest macro average.

    Classes absent from ``y_true`` are left out of the macro average; the result
    is NaN when fewer than two classes are present.
    """
    present = np.unique(y_true)
    if present.size < 2:
        return float("nan")
    if probabilities.shape[1] == 2:
        return _binary_roc_auc(y_true == 1, probabilities[:, 1])
    scores = [_binary_roc_auc(y_true == c, probabilities[:, c]) for c in present]
    return float(np.mean(scores))


def per_class_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int
) -> tuple[list[dict[str, float]], np.ndarray]:
    """Return each class's precision, recall and support, and the confusion matrix.

    Parameters
    ----------
    y_true, y_pred : ndarray of shape (n,)
        Integer class labels and predictions.
    num_classes : int
        Classes ``0 .. num_classes - 1``; a class never predicted has precision 0,
        one never present has recall 0 and support 0.

    Returns
    -------
    per_class : list of dict
        ``precision``, ``recall``, ``support`` per class, in class order.
    confusion : ndarray of int, shape (num_classes, num_classes)
        Rows are true classes, columns predicted ones.
    """
    labels = np.arange(num_classes)
    confusion = confusion_matrix(y_true, y_pred, labels)
    precision, recall = _precision_recall(y_true, y_pred, labels)
    support = _counts(np.asarray(y_true), labels)
    per_class = [
        {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "support": int(support[k]),
        }
        for k in labels
    ]
    return per_class, confusion


def confusion_matrix(
    y_true: np.ndarray, y_pred: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """Count (true, predicted) pairs over the sorted ``labels``; others are left out.

    Rows are true classes, columns predicted ones, both in the order of ``labels``.
    """
    labels = np.asarray(labels)
    true_at, true_known = _positions(np.asarray(y_true), labels)
    pred_at, pred_known = _positions(np.asarray(y_pred), labels)
    kept = true_known & pred_known
    confusion = np.zeros((labels.size, labels.size), dtype=np.int64)
    np.add.at(confusion, (true_at[kept], pred_at[kept]), 1)
    return confusion


def _positions(values: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of each value in the sorted ``labels``, and whether it is one of them."""
    at = np.searchsorted(labels, values).clip(0, max(labels.size - 1, 0))
    known = labels[at] == values if labels.size else np.zeros(values.shape, bool)
    return at, known


def _precision_recall(
    y_true: np.ndarray, y_pred: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class precision and recall over ``labels``; 0 where a class was never predicted / present.

    A row predicted outside ``labels`` (a non-finite row's -1) still counts
    against its true class's recall.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    hits = _counts(y_true[y_true == y_pred], labels).astype(np.float64)
    predicted = _counts(y_pred, labels)
    actual = _counts(y_true, labels)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, actual, out=np.zeros_like(hits), where=actual > 0)
    return precision, recall


def _counts(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """How often each of the sorted ``labels`` occurs in ``values``."""
    at, known = _positions(values, labels)
    return np.bincount(at[known], minlength=labels.size)


def _binary_roc_auc(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance a positive outscores a negative, ties half.

    The Mann-Whitney statistic over average ranks, which equals the area under
    the trapezoidal ROC curve.
    """
    is_positive = np.asarray(is_positive, dtype=bool)
    _, tie_group, tie_counts = np.unique(
        np.asarray(scores, dtype=np.float64), return_inverse=True, return_counts=True
    )
    # 1-based rank of each tie group's middle: ties share their average rank.
    average_rank = np.cumsum(tie_counts) - (tie_counts - 1) / 2.0
    positives = int(is_positive.sum())
    negatives = is_positive.size - positives
    rank_sum = float(average_rank[tie_group][is_positive].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)

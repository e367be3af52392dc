"""Classification metrics from labels and predicted probabilities.

Thin wrappers over scikit-learn's implementations, so every party reports the
same figures under the same names. Accuracy alone needs no scikit-learn
(:func:`accuracy`), so a node's federated evaluation does not pay its ~1 s
import; scikit-learn loads on the first call that needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedge.shared.lazy_import import lazy_module

if TYPE_CHECKING:
    from sklearn import metrics as skm
else:
    skm = lazy_module("sklearn.metrics")


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
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    return {
        "accuracy": accuracy(y_true, probabilities),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
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
        return float(skm.roc_auc_score(y_true, probabilities[:, 1]))
    scores = [skm.roc_auc_score(y_true == c, probabilities[:, c]) for c in present]
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
    labels = list(range(num_classes))
    precision, recall, _, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    per_class = [
        {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "support": int(support[k]),
        }
        for k in labels
    ]
    return per_class, skm.confusion_matrix(y_true, y_pred, labels=labels)

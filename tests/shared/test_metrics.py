import math

import numpy as np
import pytest

from fedge.shared.metrics import (
    accuracy,
    classification_metrics,
    per_class_metrics,
    predicted_classes,
    roc_auc,
)


def binary_case():
    # y:   0    0    0    1    1     1
    # p1: .1   .2   .4   .4   .45   .9   -> argmax predicts [0,0,0,0,0,1]
    y = np.array([0, 0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.2, 0.4, 0.4, 0.45, 0.9])
    return y, np.column_stack([1 - p1, p1])


def three_class_case():
    y = np.array([0, 1, 2, 2, 1])
    probabilities = np.array(
        [
            [0.7, 0.2, 0.1],  # true 0, predicted 0
            [0.3, 0.5, 0.2],  # true 1, predicted 1
            [0.2, 0.3, 0.5],  # true 2, predicted 2
            [0.1, 0.6, 0.3],  # true 2, predicted 1
            [0.5, 0.1, 0.4],  # true 1, predicted 0
        ]
    )
    return y, probabilities


def test_binary_metrics_match_hand_computation():
    y, probabilities = binary_case()

    m = classification_metrics(y, probabilities)

    # 4 of 6 right.
    assert m["accuracy"] == pytest.approx(4 / 6)
    # class 0: TP 3, FP 2, FN 0 -> P 3/5, R 1,   F1 3/4
    # class 1: TP 1, FP 0, FN 2 -> P 1,   R 1/3, F1 1/2
    assert m["precision"] == pytest.approx((3 / 5 + 1) / 2)
    assert m["recall"] == pytest.approx((1 + 1 / 3) / 2)
    # Macro F1 is the mean of per-class F1 (5/8), not F1 of macro P and R (8/11).
    assert m["f1"] == pytest.approx((3 / 4 + 1 / 2) / 2)


def test_binary_roc_auc_by_counting_pairs():
    y, probabilities = binary_case()

    # Positive scores .4 .45 .9 against negative .1 .2 .4: .4 beats two and ties
    # one (counts 1/2), .45 and .9 beat all three -> (2.5 + 3 + 3) / 9.
    expected = 8.5 / 9

    assert roc_auc(y, probabilities) == pytest.approx(expected)
    assert classification_metrics(y, probabilities)["roc-auc"] == pytest.approx(
        expected
    )


def test_three_class_metrics_match_hand_computation():
    y, probabilities = three_class_case()

    m = classification_metrics(y, probabilities)

    assert m["accuracy"] == pytest.approx(3 / 5)
    # predicted [0, 1, 2, 1, 0]
    # class 0: TP 1, FP 1, FN 0 -> P 1/2, R 1,   F1 2/3
    # class 1: TP 1, FP 1, FN 1 -> P 1/2, R 1/2, F1 1/2
    # class 2: TP 1, FP 0, FN 1 -> P 1,   R 1/2, F1 2/3
    assert m["precision"] == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    assert m["recall"] == pytest.approx((1 + 1 / 2 + 1 / 2) / 3)
    assert m["f1"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)


def test_three_class_roc_auc_is_one_vs_rest_macro_average():
    y, probabilities = three_class_case()

    # class 0: .7 vs {.3,.2,.1,.5}          -> 4/4
    # class 1: {.5,.1} vs {.2,.3,.6}        -> (2 + 0)/6
    # class 2: {.5,.3} vs {.1,.2,.4}        -> (3 + 2)/6
    expected = (1 + 2 / 6 + 5 / 6) / 3

    assert classification_metrics(y, probabilities)["roc-auc"] == pytest.approx(
        expected
    )


def test_roc_auc_leaves_absent_classes_out_of_the_average():
    # Class 2 never occurs: average over classes 0 and 1 only.
    y = np.array([0, 0, 1, 1])
    probabilities = np.array(
        [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.1, 0.8, 0.1]]
    )
    # class 0: {.6,.2} vs {.5,.1} -> (2 + 1)/4 ; class 1: {.4,.8} vs {.3,.7} -> (1 + 2)/4
    assert roc_auc(y, probabilities) == pytest.approx(3 / 4)


@pytest.mark.parametrize("label", [0, 1])
def test_single_class_roc_auc_is_nan(label):
    y = np.full(4, label)
    # argmax predicts 0, 1, 1, 1
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])

    m = classification_metrics(y, probabilities)

    assert math.isnan(m["roc-auc"])
    assert m["accuracy"] == pytest.approx([1 / 4, 3 / 4][label])


def test_perfect_predictions_score_one():
    y = np.array([2, 0, 1, 2])
    probabilities = np.eye(3)[y] * 0.8 + 0.2 / 3

    m = classification_metrics(y, probabilities)

    assert m == pytest.approx(
        {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "roc-auc": 1.0}
    )


def test_metrics_are_plain_floats():
    y, probabilities = binary_case()

    m = classification_metrics(y, probabilities)

    assert set(m) == {"accuracy", "precision", "recall", "f1", "roc-auc"}
    assert all(type(v) is float for v in m.values())


def test_non_finite_outputs_count_as_wrong_and_leave_roc_auc_undefined():
    y = np.array([0, 1, 1, 0])
    probabilities = np.array([[0.9, 0.1], [np.nan, np.nan], [0.2, 0.8], [np.inf, 0.0]])
    m = classification_metrics(y, probabilities)
    assert m["accuracy"] == pytest.approx(0.5)  # rows 0 and 2 right, 1 and 3 unusable
    assert np.isnan(m["roc-auc"])


def test_accuracy_alone_counts_non_finite_rows_as_wrong():
    y = np.array([0, 1, 1, 0])
    probabilities = np.array([[0.9, 0.1], [np.nan, np.nan], [0.2, 0.8], [np.inf, 0.0]])
    assert accuracy(y, probabilities) == 0.5
    assert predicted_classes(probabilities).tolist() == [0, -1, 1, -1]
    assert accuracy(np.array([]), np.zeros((0, 2))) == 0.0


def _random_case(seed, num_classes, n=300):
    rng = np.random.default_rng(seed)
    # A few classes absent from the labels, and scores rounded so ties are common.
    y = rng.choice(max(num_classes - 1, 2), size=n)
    logits = rng.normal(size=(n, num_classes)) + np.eye(num_classes)[y] * 1.5
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, np.round(probabilities, 2)


@pytest.mark.parametrize("num_classes", [2, 3, 10])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_figure_equals_scikit_learns(seed, num_classes):
    from sklearn import metrics as skm

    y, probabilities = _random_case(seed, num_classes)
    y_pred = predicted_classes(probabilities)
    labels = np.union1d(y, y_pred)

    ours = classification_metrics(y, probabilities)
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y, y_pred, labels=labels, average="macro", zero_division=0
    )
    if num_classes == 2:
        auc = skm.roc_auc_score(y, probabilities[:, 1])
    else:
        auc = np.mean(
            [skm.roc_auc_score(y == c, probabilities[:, c]) for c in np.unique(y)]
        )
    assert ours["precision"] == pytest.approx(precision, abs=1e-12)
    assert ours["recall"] == pytest.approx(recall, abs=1e-12)
    assert ours["f1"] == pytest.approx(f1, abs=1e-12)
    assert ours["roc-auc"] == pytest.approx(auc, abs=1e-12)

    per_class, confusion = per_class_metrics(y, y_pred, num_classes)
    p, r, _, support = skm.precision_recall_fscore_support(
        y, y_pred, labels=list(range(num_classes)), average=None, zero_division=0
    )
    assert np.array_equal(
        confusion, skm.confusion_matrix(y, y_pred, labels=list(range(num_classes)))
    )
    assert [c["precision"] for c in per_class] == pytest.approx(p, abs=1e-12)
    assert [c["recall"] for c in per_class] == pytest.approx(r, abs=1e-12)
    assert [c["support"] for c in per_class] == list(support)


def test_predictions_outside_the_classes_are_left_out_as_scikit_learn_does():
    from sklearn import metrics as skm

    y = np.array([0, 1, 2, 2, 1, 0])
    y_pred = np.array([0, -1, 2, 1, 1, -1])  # -1: a non-finite row

    per_class, confusion = per_class_metrics(y, y_pred, 3)

    assert np.array_equal(confusion, skm.confusion_matrix(y, y_pred, labels=[0, 1, 2]))
    assert [c["support"] for c in per_class] == [2, 2, 2]

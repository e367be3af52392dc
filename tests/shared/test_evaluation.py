import math

import numpy as np
import pytest
import torch
from torch import nn

from fedge.shared.evaluation import evaluate_loss_accuracy, evaluate_model

LN3 = math.log(3.0)


def logits_and_labels():
    # The model is the identity, so x are the logits.
    # softmax([0, ln3]) = (1/4, 3/4); softmax([0, 0]) = (1/2, 1/2).
    x = np.array([[0, LN3], [LN3, 0], [0, 0], [0, LN3]], dtype=np.float32)
    y = np.array([1, 0, 1, 0])
    return x, y


def expected_loss():
    # -ln of the probability of the true class: 3/4, 3/4, 1/2, 1/4.
    return (-math.log(3 / 4) * 2 - math.log(1 / 2) - math.log(1 / 4)) / 4


@pytest.mark.parametrize("batch_size", [1, 3, 512])
def test_loss_and_metrics_match_hand_computation(batch_size):
    x, y = logits_and_labels()

    m = evaluate_model(nn.Identity(), x, y, batch_size=batch_size)

    assert m["loss"] == pytest.approx(expected_loss(), rel=1e-6)
    # argmax: 1, 0, 0 (tie -> first), 1 against labels 1, 0, 1, 0.
    assert m["accuracy"] == pytest.approx(2 / 4)
    # positives p1 {3/4, 1/2} vs negatives {1/4, 3/4}: 1 + 1/2 (tie) + 1 + 0.
    assert m["roc-auc"] == pytest.approx(2.5 / 4)
    assert set(m) == {"loss", "accuracy", "precision", "recall", "f1", "roc-auc"}


def test_loss_and_accuracy_alone_match_hand_computation():
    x, y = logits_and_labels()

    m = evaluate_loss_accuracy(nn.Identity(), x, y, batch_size=3)

    assert m == {"loss": pytest.approx(expected_loss(), rel=1e-6), "accuracy": 0.5}


def test_model_is_put_in_eval_mode():
    # In training mode this dropout would zero most logits at random.
    x, y = logits_and_labels()
    model = nn.Sequential(nn.Dropout(p=0.9))
    model.train()

    m = evaluate_model(model, x, y)

    assert not model.training
    assert m["loss"] == pytest.approx(expected_loss(), rel=1e-6)


def test_evaluation_does_not_change_weights_or_track_gradients():
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = logits_and_labels()

    evaluate_model(model, x, y)

    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())

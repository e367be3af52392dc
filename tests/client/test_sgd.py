"""MomentumSGD takes exactly torch.optim.SGD's steps, without importing torch._dynamo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from fedge.client.sgd import MomentumSGD


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_steps_equal_torch_sgd_including_parameters_without_gradient(momentum):
    ours, reference = _model(), _model()
    reference_sgd = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=momentum)
    sgd = MomentumSGD(ours.parameters(), lr=0.1, momentum=momentum)
    x, y = torch.randn(8, 4), torch.tensor([0, 1] * 4)
    for step in range(4):
        for model, opt in ((ours, sgd), (reference, reference_sgd)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x * (step + 1)), y).backward()
            if step == 2:  # a parameter with no gradient this step keeps its buffer
                model[0].bias.grad = None
            opt.step()
    for p, q in zip(ours.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    assert not torch.equal(ours[0].weight, _model()[0].weight)


def test_zero_grad_drops_the_gradients():
    model = _model()
    sgd = MomentumSGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4)).sum().backward()

    sgd.zero_grad()

    assert all(p.grad is None for p in model.parameters())


def test_training_a_step_does_not_import_torch_dynamo():
    code = (
        "import sys, torch; from fedge.client.sgd import MomentumSGD\n"
        "m = torch.nn.Linear(2, 1); opt = MomentumSGD(m.parameters(), lr=0.1, momentum=0.9)\n"
        "m(torch.ones(1, 2)).sum().backward(); opt.step()\n"
        "print(json.dumps('torch._dynamo' in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json\n" + code],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out.strip().splitlines()[-1]) is False

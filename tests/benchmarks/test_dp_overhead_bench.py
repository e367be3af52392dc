"""The dp_overhead benchmark at a tiny size: like-with-like baselines, its models."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import dp_overhead  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")


def test_fedge_plain_baseline_steps_fedge_optimiser_not_torch_optim(monkeypatch):
    # fedge's DP step runs MomentumSGD; so must the plain step it is divided by.
    def refuse(*args, **kwargs):
        raise AssertionError("the fedge baseline built a torch.optim.SGD")

    model = dp_overhead.MODELS["mlp"].build()
    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    before = [p.detach().clone() for p in model.parameters()]
    monkeypatch.setattr(torch.optim, "SGD", refuse)
    step = dp_overhead._plain_step(model, torch_sgd=False)
    step(x, y)
    assert all(
        not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True)
    )


def test_figures_divide_each_system_by_its_own_plain_step():
    figures = dp_overhead.main(
        ["--models", "text", "cnn_frozen", "--steps", "2", "--repeats", "1"]
    )
    for name in ("text", "cnn_frozen"):
        row = next(r for r in figures["rows"] if r["model"] == name)
        assert row["fedge_ratio"] == pytest.approx(row["fedge_ms"] / row["plain_ms"])
        for mode in ("hooks", "ghost"):
            assert row[f"{mode}_ratio"] == pytest.approx(
                row[f"{mode}_ms"] / row["plain_torch_ms"]
            )
        assert figures[f"{name}_fedge_ratio"] == pytest.approx(
            row["fedge_ratio"], abs=1e-4
        )
    # The text model is one the fast path does not cover; a frozen backbone
    # leaves only the logits layer to train, which it does.
    assert figures["text_fedge_path"] == "hooks"
    assert figures["cnn_frozen_fedge_path"] == "fast"


def test_the_frozen_cnn_trains_only_its_logits_layer():
    model = dp_overhead.MODELS["cnn_frozen"].build()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.3.weight", "classifier.3.bias"]

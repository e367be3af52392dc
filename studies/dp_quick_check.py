"""A quick in-process check of DP-SGD settings: per-node DP-SGD and FedAvg, no engine.

Each node trains with fedge's own DP-SGD (:func:`fedge.client.dp_training.train_private`)
on the plan its node would make (:func:`fedge.shared.privacy_plan.plan_privacy`: σ
calibrated for ``--epsilon`` over the whole run, q, steps), on the partition
``fedge simulate`` gives it; the global model is the example-weighted mean of
the replies (FedAvg), and the central accuracy is on the data set's test split.
It runs in one process, so trying a setting takes seconds to minutes instead of
a simulation's start-up; ``fedge simulate`` remains what a result is confirmed
with. The noise is seeded (``--seed``) so a rerun is identical; a real node's is
not.

    python -m fedge.studies.dp_quick_check --model random-conv-linear --batch-size 64
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from fedge.client.dp_training import train_private
from fedge.client.node_data import load_node_data
from fedge.shared.config import default_run_config, from_run_config
from fedge.shared.datasets import load_builtin
from fedge.shared.evaluation import evaluate_model
from fedge.shared.models import build_model, default_spec
from fedge.shared.privacy_plan import plan_privacy


def quick_check(
    *,
    dataset: str = "digits",
    clients: int = 10,
    partitioning: str = "iid",
    rounds: int = 10,
    epsilon: float = 8.0,
    model: str = "random-conv-linear",
    batch_size: int = 64,
    local_epochs: int = 4,
    learning_rate: float = 0.25,
    momentum: float = 0.9,
    max_grad_norm: float = 1.0,
    augment_multiplicity: int = 0,
    seed: int = 0,
) -> dict[str, float]:
    """Train ``rounds`` of per-node DP-SGD + FedAvg; return accuracy, σ and q of node 0."""
    config = from_run_config(
        {
            **default_run_config(),
            "dataset": dataset,
            "partitioning": partitioning,
            "model-seed": seed,
        }
    )
    reference = load_builtin(dataset, "test")
    shape = tuple(reference.preprocessing.input_shape)
    nodes = [
        load_node_data(
            {"partition-id": i, "num-partitions": clients},
            config.data,
            reference.preprocessing,
        ).train
        for i in range(clients)
    ]
    global_model = build_model(
        default_spec(model, shape, reference.preprocessing.num_classes),
        model_seed=seed,
    )
    plans = [
        plan_privacy(
            num_examples=len(node),
            batch_size=batch_size,
            local_epochs=local_epochs,
            rounds=rounds,
            noise_multiplier=0.0,
            target_epsilon=epsilon,
            target_delta=0.0,
            accountant="rdp",
        )
        for node in nodes
    ]
    for server_round in range(1, rounds + 1):
        states, weights = [], []
        for i, (node, plan) in enumerate(zip(nodes, plans, strict=True)):
            local = copy.deepcopy(global_model)
            result = train_private(
                local,
                node.x,
                node.y,
                noise_multiplier=plan.noise_multiplier,
                sample_rate=plan.sample_rate,
                steps=plan.steps_per_round,
                learning_rate=learning_rate,
                momentum=momentum,
                max_grad_norm=max_grad_norm,
                seed=seed * 1_000_000 + server_round * 1000 + i,
                augment_multiplicity=augment_multiplicity,
                augment_seed=(seed, server_round),
                check_model=False,
            )
            states.append(result.state_dict)
            weights.append(len(node))
        share = np.asarray(weights, dtype=np.float64) / sum(weights)
        global_model.load_state_dict(
            {
                name: sum(
                    float(w) * s[name] for w, s in zip(share, states, strict=True)
                )
                for name in states[0]
            }
        )
    accuracy = evaluate_model(global_model, reference.x, reference.y)["accuracy"]
    return {
        "accuracy": float(accuracy),
        "noise_multiplier": plans[0].noise_multiplier,
        "sample_rate": plans[0].sample_rate,
    }


def main(argv: list[str] | None = None) -> None:
    """Parse the settings, run :func:`quick_check`, print one line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--partitioning", default="iid")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epsilon", type=float, default=8.0, help="per node")
    parser.add_argument("--model", default="random-conv-linear")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--local-epochs", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=0.25)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--augment-multiplicity", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    figures = quick_check(**vars(args))
    print(
        f"{args.dataset}, {args.clients} clients, ε = {args.epsilon:g}: accuracy "
        f"{figures['accuracy']:.3f} (σ = {figures['noise_multiplier']:.3f}, "
        f"q = {figures['sample_rate']:.3f})"
    )


if __name__ == "__main__":
    main()

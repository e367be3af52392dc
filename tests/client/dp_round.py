"""One DP round of a digits node, as the ClientApp runs it, for comparing settings."""

from flwr.app import Context, RecordDict
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from fedge.client.node_data import load_node_data
from fedge.client.private_round import train_private_round
from fedge.shared import keys
from fedge.shared.config import default_run_config, from_run_config
from fedge.shared.datasets import load_builtin
from fedge.shared.models import build_model, default_spec

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
# What the node's reply says it spent: equal settings must give equal figures.
SPEND = (keys.NOISE_MULTIPLIER, keys.SAMPLE_RATE, keys.DP_ROUND_STEPS, keys.DELTA)


def one_dp_round(model_name, **overrides):
    """Round 1 at ε = 8, δ = 1e-4, batch 32, one epoch: (reply figures, model, n)."""
    run_config = {
        **default_run_config(),
        "dp-mode": "sample",
        "target-epsilon": 8.0,
        "target-delta": 1e-4,
        "local-epochs": 1,
        "batch-size": 32,
        "model": model_name,
        **overrides,
    }
    config = from_run_config(run_config)
    node_config = {"partition-id": 1, "num-partitions": 3}
    reference = load_builtin("digits", "test")
    data = load_node_data(node_config, config.data, reference.preprocessing)
    model = build_model(default_spec(model_name, (1, 8, 8), 10), model_seed=0)
    context = Context(
        run_id=1,
        node_id=3,
        node_config=node_config,
        state=RecordDict(),
        run_config=run_config,
    )
    figures = train_private_round(
        model,
        data.train,
        config=config,
        context=context,
        server_round=1,
        fedge_run_id="run",
    )
    return figures, model, len(data.train)


def opacus_epsilon(figures):
    """ε of the reply's (q, σ, steps) at δ = 1e-4 by Opacus's own RDP analysis."""
    rdp = compute_rdp(
        q=figures[keys.SAMPLE_RATE],
        noise_multiplier=figures[keys.NOISE_MULTIPLIER],
        steps=figures[keys.DP_ROUND_STEPS],
        orders=ORDERS,
    )
    return get_privacy_spent(orders=ORDERS, rdp=rdp, delta=1e-4)[0]

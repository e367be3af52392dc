"""One DP-SGD round on a node: plan, check the budget, train, record the spend.

The noise multiplier is calibrated once for the whole planned run (every local
step of every round), not per round; the ledger carries the node's cumulative
spend across rounds and restarts; a round that would take ε past the budget is
refused before any training, and the reply says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context
from torch import nn

from client.budget import check_budget
from client.dp_training import train_private, validate_private_model
from client.privacy_ledger import STATE_KEY, PrivacyLedger, ledger_path, restore_ledger
from shared import keys
from shared.config import RunConfig
from shared.datasets import Dataset
from shared.privacy import calibrate_noise_multiplier, plan_sampling, resolve_delta

logger = logging.getLogger(__name__)

STATE_DIR = "state-dir"  # node config: where this node keeps its privacy ledger
PLAN_KEY = "dp-plan"  # context.state record caching the calibrated plan


@dataclass(frozen=True)
class PrivacyPlan:
    """The DP-SGD schedule of this node for the whole run."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    delta: float

    def to_record(self, plan_id: str) -> ConfigRecord:
        """Cache in ``context.state`` (calibrating costs about a second)."""
        return ConfigRecord(
            {
                "plan-id": plan_id,
                "noise-multiplier": self.noise_multiplier,
                "sample-rate": self.sample_rate,
                "steps-per-round": self.steps_per_round,
                "delta": self.delta,
            }
        )


def plan_privacy(config: RunConfig, num_examples: int, context: Context) -> PrivacyPlan:
    """σ, sampling rate, steps and δ for this node; calibrated once per run."""
    dp, train = config.dp, config.train
    delta = resolve_delta(dp.target_delta, num_examples)
    sample_rate, steps_per_epoch = plan_sampling(
        num_examples=num_examples, batch_size=train.batch_size
    )
    steps_per_round = steps_per_epoch * train.local_epochs
    if dp.noise_multiplier > 0:
        return PrivacyPlan(dp.noise_multiplier, sample_rate, steps_per_round, delta)
    plan_id = f"{num_examples}:{config.to_flat()}"
    cached = context.state.get(PLAN_KEY)
    if cached is not None and cached.get("plan-id") == plan_id:
        return PrivacyPlan(
            float(cached["noise-multiplier"]),
            float(cached["sample-rate"]),
            int(cached["steps-per-round"]),
            float(cached["delta"]),
        )
    sigma = calibrate_noise_multiplier(
        target_epsilon=dp.target_epsilon,
        target_delta=delta,
        sample_rate=sample_rate,
        steps=steps_per_round * config.run.num_server_rounds,
        accountant=dp.accountant,
    )
    plan = PrivacyPlan(sigma, sample_rate, steps_per_round, delta)
    context.state[PLAN_KEY] = plan.to_record(plan_id)
    return plan


def node_key(node_config: Mapping[str, Any]) -> str:
    """A name for this node that survives restarts (Flower's node id does not)."""
    if node_config.get("data-path"):
        return f"data:{node_config['data-path']}"
    return f"partition:{node_config.get('partition-id')}/{node_config.get('num-partitions')}"


def ledger_file(config: RunConfig, context: Context, fedge_run_id: str) -> Path | None:
    """The node's ledger file: its own ``state-dir``, else the run's node-state dir."""
    state_dir = context.node_config.get(STATE_DIR) or config.run.node_state_dir
    if not state_dir:
        return None
    folder = Path(str(state_dir)).expanduser()
    if not context.node_config.get(STATE_DIR):
        # One shared folder for many simulated nodes: a subfolder each.
        safe = node_key(context.node_config).replace("/", "-").replace(":", "-")
        folder = folder / safe
    return ledger_path(folder, fedge_run_id)


def train_private_round(
    model: nn.Module,
    train: Dataset,
    *,
    config: RunConfig,
    context: Context,
    server_round: int,
    fedge_run_id: str,
) -> dict[str, float | int]:
    """Train one DP round in place, or refuse; return the reply's metrics.

    Raises
    ------
    LedgerError
        If the node's ledger is corrupt, foreign or inconsistent: the node
        refuses to train rather than restart its count at zero.
    """
    dp = config.dp
    validate_private_model(model)
    plan = plan_privacy(config, len(train), context)
    path = ledger_file(config, context, fedge_run_id)
    ledger = restore_ledger(
        path=path,
        state_record=context.state.get(STATE_KEY),
        run_id=fedge_run_id,
        node_key=node_key(context.node_config),
    )
    planned = (plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)
    decision = check_budget(
        ledger=ledger,
        planned=planned,
        delta=plan.delta,
        budget_epsilon=dp.target_epsilon,
        accountant=dp.accountant,
    )
    figures = {
        keys.DELTA: plan.delta,
        keys.NOISE_MULTIPLIER: plan.noise_multiplier,
        keys.SAMPLE_RATE: plan.sample_rate,
    }
    if ledger.has_round(server_round) or not decision.allowed:
        reason = (
            f"round {server_round} already trained in this run"
            if ledger.has_round(server_round)
            else decision.reason
        )
        logger.warning("not training round %d: %s", server_round, reason)
        return {
            keys.REFUSED: 1,
            keys.EPSILON: decision.epsilon_now,
            keys.DP_STEPS: ledger.total_steps,
            keys.NUM_EXAMPLES: len(train),
            **figures,
        }
    result = train_private(
        model,
        train.x,
        train.y,
        epochs=config.train.local_epochs,
        batch_size=config.train.batch_size,
        learning_rate=config.train.learning_rate,
        momentum=config.train.momentum,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        # No seed: noise the server could reproduce would void the guarantee.
        seed=None,
        proximal_mu=config.strategy.proximal_mu
        if config.strategy.name == "fedprox"
        else 0.0,
    )
    model.load_state_dict(result.state_dict)
    # Record before replying: the update is about to be released.
    ledger.record(
        server_round=server_round,
        noise_multiplier=plan.noise_multiplier,
        sample_rate=result.sample_rate,
        steps=result.steps,
    )
    if path is not None:
        ledger.save(path)
    context.state[STATE_KEY] = ledger.to_config_record()
    return {
        keys.REFUSED: 0,
        keys.EPSILON: ledger.epsilon(plan.delta, dp.accountant),
        keys.DP_STEPS: ledger.total_steps,
        keys.NUM_EXAMPLES: result.num_examples,
        **figures,
    }


__all__ = ["PrivacyLedger", "train_private_round"]

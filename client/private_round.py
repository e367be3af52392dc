"""One DP-SGD round on a node: plan, check the budget, train, record the spend.

The noise multiplier is calibrated once for the whole planned run (every local
step of every round), not per round; the ledger carries the node's cumulative
spend across rounds and restarts; a round that would take ε past the budget is
refused before any training, and the reply says so. A round asked for again
(its reply was lost) with the same global parameters gets the update already
released for it, bit for bit, and costs nothing (:mod:`fedge.client.release_cache`
says why); asked with other parameters, it is trained again and counted again:
every release counts.

Everything a node can prepare once per run is kept in ``context.state``, which
survives between messages even when each message runs in a fresh process
(deployment): the plan with its ε schedule (so the budget check needs no
accountant after the first message) and the model specs Opacus accepted (so
the model is validated once, not twice per message).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context
from torch import nn

from fedge.client.budget import check_budget
from fedge.client.dp_training import train_private, validate_private_model
from fedge.client.privacy_ledger import (
    STATE_KEY,
    PrivacyLedger,
    ledger_path,
    restore_ledger,
)
from fedge.client.release_cache import (
    CachedRelease,
    load_release,
    release_key,
    release_path,
    save_release,
)
from fedge.shared import keys
from fedge.shared.config import RunConfig
from fedge.shared.datasets import Dataset
from fedge.shared.privacy import epsilon_schedule
from fedge.shared.privacy_history import WIRE_COLUMNS, ReleaseHistory
from fedge.shared.privacy_plan import PrivacyPlan, plan_for_config
from fedge.shared.records import record_list, record_scalar

logger = logging.getLogger(__name__)

PLAN_KEY = "dp-plan"  # context.state record caching the calibrated plan
VALIDATED_KEY = "dp-validated-models"  # context.state: specs Opacus accepted
# Model specs validated in this process (simulation reuses processes).
_validated_specs: set[str] = set()


@dataclass(frozen=True)
class CachedPlan:
    """The node's plan (:func:`fedge.shared.privacy_plan.plan_privacy`) and its ε schedule.

    ``epsilon_schedule[k]`` is ε after ``k`` planned rounds (the whole run for
    RDP; for PRV it grows by one element per round, see :func:`extend_schedule`).
    """

    plan: PrivacyPlan
    epsilon_schedule: tuple[float, ...] = ()

    def to_record(self, plan_id: str) -> ConfigRecord:
        """Cache in ``context.state`` (calibrating costs about a second)."""
        plan = self.plan
        return ConfigRecord(
            {
                "plan-id": plan_id,
                keys.NOISE_MULTIPLIER: plan.noise_multiplier,
                keys.SAMPLE_RATE: plan.sample_rate,
                "steps-per-round": plan.steps_per_round,
                "rounds": plan.rounds,
                keys.DELTA: plan.delta,
                "accountant": plan.accountant,
                "epsilon-schedule": list(self.epsilon_schedule),
            }
        )

    @classmethod
    def from_record(cls, record: ConfigRecord) -> CachedPlan:
        """Rebuild from :meth:`to_record`."""
        plan = PrivacyPlan(
            noise_multiplier=float(record_scalar(record, keys.NOISE_MULTIPLIER)),
            sample_rate=float(record_scalar(record, keys.SAMPLE_RATE)),
            steps_per_round=int(record_scalar(record, "steps-per-round")),
            rounds=int(record_scalar(record, "rounds")),
            delta=float(record_scalar(record, keys.DELTA)),
            accountant=str(record["accountant"]),
        )
        schedule = tuple(float(e) for e in record_list(record, "epsilon-schedule"))
        return cls(plan, schedule)


def cached_plan(config: RunConfig, num_examples: int, context: Context) -> CachedPlan:
    """Return the node's plan and ε schedule; computed on the first message only."""
    plan_id = f"v2:{num_examples}:{config.to_flat()}"  # v2: with rounds, accountant
    cached = context.state.config_records.get(PLAN_KEY)
    if cached is not None and cached.get("plan-id") == plan_id:
        return CachedPlan.from_record(cached)
    plan = plan_for_config(config=config, num_examples=num_examples)
    # RDP: the whole run in microseconds. PRV costs a fraction of a second per
    # round, so its schedule starts at ε = 0 and grows by the ε each budget
    # check computes (extend_schedule): one PRV evaluation per round.
    schedule: tuple[float, ...] = (0.0,)
    if plan.accountant == "rdp":
        schedule = epsilon_schedule(
            entry=plan.round_entry, rounds=plan.rounds, delta=plan.delta
        )
    cached_run = CachedPlan(plan, schedule)
    context.state[PLAN_KEY] = cached_run.to_record(plan_id)
    return cached_run


def extend_schedule(
    cached: CachedPlan,
    *,
    ledger: PrivacyLedger,
    epsilon_after: float,
    context: Context,
) -> None:
    """Keep ``epsilon_after`` (ε after one more planned round) in the cached plan.

    Only when the ledger holds nothing but planned rounds and the schedule ends
    exactly where the ledger does, so element ``k`` stays ε after ``k`` rounds.
    """
    k = len(ledger.history)
    record = context.state.get(PLAN_KEY)
    if (
        record is None
        or len(cached.epsilon_schedule) != k + 1
        or any(e != cached.plan.round_entry for e in ledger.history.opacus_history)
    ):
        return
    grown = replace(cached, epsilon_schedule=(*cached.epsilon_schedule, epsilon_after))
    context.state[PLAN_KEY] = grown.to_record(str(record["plan-id"]))


def check_private_model_once(
    model: nn.Module, model_spec: str, context: Context
) -> None:
    """:func:`validate_private_model` once per model spec for this node.

    The spec (:meth:`fedge.shared.models.ModelSpec.to_json`) fully determines the
    layers Opacus inspects, so one accepted spec stays accepted.
    """
    digest = hashlib.sha256(model_spec.encode("utf-8")).hexdigest()[:16]
    record = context.state.config_records.get(VALIDATED_KEY)
    known = [str(s) for s in record_list(record, "specs")] if record is not None else []
    if digest in known:
        return
    if digest not in _validated_specs:
        validate_private_model(model)  # raises ModelError; nothing is cached then
        _validated_specs.add(digest)
    # Also when this process knew it: the node's next process may not.
    context.state[VALIDATED_KEY] = ConfigRecord({"specs": [*known, digest]})


def node_key(node_config: Mapping[str, Any]) -> str:
    """Return a name for this node that survives restarts (Flower's node id does not)."""
    if node_config.get(keys.DATA_PATH):
        return f"data:{node_config[keys.DATA_PATH]}"
    return (
        f"partition:{node_config.get(keys.PARTITION_ID)}"
        f"/{node_config.get(keys.NUM_PARTITIONS)}"
    )


def coordinator_record_from(server_config: ConfigRecord) -> ReleaseHistory:
    """Return the coordinator's record of this node's releases sent with the round.

    Raises
    ------
    ConfigError
        If a release in it is invalid.
    """
    if WIRE_COLUMNS.server_rounds not in server_config:
        return ReleaseHistory()
    return ReleaseHistory.from_columns(
        server_config, WIRE_COLUMNS, where="the coordinator's privacy record"
    )


def node_state_folder(config: RunConfig, context: Context) -> Path | None:
    """Return the folder this node keeps its privacy state in, or None if it has none.

    Its own ``state-dir`` (node config), else its subfolder of the run's
    ``node-state-dir`` (simulated nodes share one).
    """
    state_dir = context.node_config.get(keys.STATE_DIR) or config.run.node_state_dir
    if not state_dir:
        return None
    folder = Path(str(state_dir)).expanduser()
    if not context.node_config.get(keys.STATE_DIR):
        # One shared folder for many simulated nodes: a subfolder each.
        safe = node_key(context.node_config).replace("/", "-").replace(":", "-")
        folder = folder / safe
    return folder


def train_private_round(
    model: nn.Module,
    train: Dataset,
    *,
    config: RunConfig,
    context: Context,
    server_round: int,
    fedge_run_id: str,
    model_spec: str | None = None,
    coordinator_record: ReleaseHistory | None = None,
) -> dict[str, float | int]:
    """Train one DP round in place, or refuse; return the reply's metrics.

    ``model_spec`` is the JSON spec ``model`` was built from; it keys the
    once-per-spec model validation (None: validate this model every time).
    ``coordinator_record`` is the coordinator's record of this node's releases
    (:func:`coordinator_record_from`); the node continues from the larger of
    it and its own ledger, round by round
    (:meth:`~fedge.shared.privacy_history.ReleaseHistory.adopt_larger`).

    Raises
    ------
    LedgerError
        If the node's ledger is corrupt, foreign or inconsistent: the node
        refuses to train rather than restart its count at zero.
    """
    dp = config.dp
    if model_spec is None:
        validate_private_model(model)
    else:
        check_private_model_once(model, model_spec, context)
    cached = cached_plan(config, len(train), context)
    plan = cached.plan
    folder = node_state_folder(config, context)
    path = None if folder is None else ledger_path(folder, fedge_run_id)
    released_file = None if folder is None else release_path(folder, fedge_run_id)
    ledger = restore_ledger(
        path=path,
        state_record=context.state.config_records.get(STATE_KEY),
        run_id=fedge_run_id,
        node_key=node_key(context.node_config),
    )
    merged = ledger.history.adopt_larger(coordinator_record or ReleaseHistory())
    if merged != ledger.history:
        logger.warning(
            "the coordinator's record of this node's privacy spend holds more than "
            "its own ledger (%d releases, own %d; state-dir lost or reset?): "
            "continuing from the larger",
            len(merged),
            len(ledger.history),
        )
        ledger.history = merged
    # Before training: the key is of the global parameters as received.
    key = release_key(
        model.state_dict(),
        config=config,
        model_spec=model_spec,
        round_entry=plan.round_entry,
        num_examples=len(train),
    )
    if released_file is not None and ledger.history.has_round(server_round):
        resent = resend_released(
            model, released_file, server_round=server_round, key=key, ledger=ledger
        )
        if resent is not None:
            return resent
    decision = check_budget(
        history=ledger.history,
        planned=plan.round_entry,
        delta=plan.delta,
        budget_epsilon=dp.target_epsilon,
        accountant=plan.accountant,
        schedule=cached.epsilon_schedule,
    )
    extend_schedule(
        cached, ledger=ledger, epsilon_after=decision.epsilon_after, context=context
    )
    figures = {
        keys.DELTA: plan.delta,
        keys.NOISE_MULTIPLIER: plan.noise_multiplier,
        keys.SAMPLE_RATE: plan.sample_rate,
    }
    if not decision.allowed:
        logger.warning("not training round %d: %s", server_round, decision.reason)
        return {
            keys.REFUSED: 1,
            keys.EPSILON: decision.epsilon_now,
            keys.DP_STEPS: ledger.history.total_steps,
            keys.NUM_EXAMPLES: len(train),
            **figures,
        }
    result = train_private(
        model,
        train.x,
        train.y,
        noise_multiplier=plan.noise_multiplier,
        sample_rate=plan.sample_rate,
        steps=plan.steps_per_round,
        learning_rate=config.train.learning_rate,
        momentum=config.train.momentum,
        max_grad_norm=dp.max_grad_norm,
        # No seed: noise the server could reproduce would void the guarantee.
        seed=None,
        proximal_mu=config.strategy.local_proximal_mu,
        check_model=False,  # check_private_model_once did
        augment_multiplicity=dp.augment_multiplicity,
        # Views are data-independent: reproducible from (model seed, round).
        augment_seed=(config.train.model_seed, server_round),
        ema_decay=config.train.ema_decay,
    )
    model.load_state_dict(result.state_dict)
    # Asked again for a round it already released, with other global
    # parameters than the cached release answered (or none is cached). The
    # first update may have been seen, so this release is one more entry: ε
    # counts both, never only the latest.
    released_before = ledger.history.has_round(server_round)
    if released_before:
        logger.warning(
            "round %d was already released in this run with other global "
            "parameters (or its update is not cached); trained it again, and the "
            "ledger counts both releases",
            server_round,
        )
    # Record before replying: the update is about to be released. What is
    # recorded is exactly the entry the budget check approved.
    sigma, sample_rate, steps = plan.round_entry
    ledger.record(
        server_round=server_round,
        noise_multiplier=sigma,
        sample_rate=sample_rate,
        steps=steps,
        again=released_before,
    )
    if path is not None:
        ledger.save(path)
    context.state[STATE_KEY] = ledger.to_config_record()
    # The budget check already accounted for exactly this round.
    reply: dict[str, float | int] = {
        keys.REFUSED: 0,
        keys.EPSILON: decision.epsilon_after,
        keys.DP_STEPS: ledger.history.total_steps,
        keys.DP_ROUND_STEPS: steps,
        keys.NUM_EXAMPLES: result.num_examples,
        **figures,
    }
    if released_file is not None:
        # Kept before replying, as the ledger entry is: what is about to be sent.
        release = CachedRelease(
            server_round=server_round,
            key=key,
            ledger_length=len(ledger.history),
            state_dict={
                name: tensor.detach().cpu().numpy()
                for name, tensor in model.state_dict().items()
            },
            figures=reply,
        )
        save_release(released_file, release)
    return reply


def resend_released(
    model: nn.Module,
    released_file: Path,
    *,
    server_round: int,
    key: str,
    ledger: PrivacyLedger,
) -> dict[str, float | int] | None:
    """Load the update already released for this very request into ``model``.

    Returns the figures it was sent with, or None (the model untouched) when
    the cached release does not answer ``server_round`` asked with ``key``
    with the ledger as it left it (:meth:`CachedRelease.answers`).
    """
    release = load_release(released_file)
    rounds = ledger.history.server_rounds
    if release is None or not release.answers(server_round, key, rounds):
        return None
    model.load_state_dict(release.torch_state_dict())
    logger.warning(
        "round %d asked for again with the same global parameters (the "
        "coordinator lost the reply): resending the update already released for "
        "it, bit for bit; no new ledger entry, ε stays %.4g",
        server_round,
        release.figures[keys.EPSILON],
    )
    return dict(release.figures)


__all__ = ["PrivacyLedger", "train_private_round"]

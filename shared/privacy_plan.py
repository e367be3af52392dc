"""A node's DP-SGD plan for a whole run: the one place (σ, q, steps, δ) are decided.

The node's training, its budget check, its ledger and ``fedge privacy`` all
take their numbers from :func:`plan_privacy`, so the guarantee rests on one
function: what is accounted is what is trained.

* ``sample_rate q = min(1, batch_size / n)``: a Poisson batch holds
  ``batch_size`` examples on average;
* ``steps_per_round = round(1 / q) * local_epochs``: one epoch sees each
  example once in expectation (:func:`fedge.shared.privacy.plan_sampling`);
* ``noise_multiplier``: as configured, or, when it is 0, calibrated once for
  every step of every planned round so the whole run spends at most
  ``target_epsilon`` (Opacus's search);
* ``delta``: as configured, or a power of ten ≤ 1/(10 n) when it is 0.

Pure: no state, no files (calibration is memoised in :mod:`fedge.shared.privacy`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedge.shared.config import RunConfig
from fedge.shared.dp_defaults import (
    PLAIN_BATCH_SIZE,
    PLAIN_LOCAL_EPOCHS,
    LocalSchedule,
    suggest_dp_training,
)
from fedge.shared.errors import ConfigError
from fedge.shared.privacy import (
    HistoryEntry,
    calibrate_noise_multiplier,
    plan_sampling,
    resolve_delta,
)


@dataclass(frozen=True)
class PrivacyPlan:
    """The DP-SGD schedule of one node for the whole run.

    Attributes
    ----------
    noise_multiplier : float
        σ for every step of the run.
    sample_rate : float
        Poisson sampling rate q per step.
    steps_per_round : int
        DP-SGD steps a round trains (and the ledger records).
    rounds : int
        Planned server rounds.
    delta : float
        δ every ε of this node is stated at.
    accountant : {"rdp", "prv"}
    """

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    rounds: int
    delta: float
    accountant: str

    @property
    def round_entry(self) -> HistoryEntry:
        """One planned round as an accountant history entry."""
        return (self.noise_multiplier, self.sample_rate, self.steps_per_round)

    @property
    def total_steps(self) -> int:
        """Steps over every planned round."""
        return self.steps_per_round * self.rounds


def plan_privacy(
    *,
    num_examples: int,
    batch_size: int,
    local_epochs: int,
    rounds: int,
    noise_multiplier: float,
    target_epsilon: float,
    target_delta: float,
    accountant: str,
) -> PrivacyPlan:
    """Return the node's plan; calibrate σ for ``target_epsilon`` when σ is 0.

    Parameters
    ----------
    num_examples, batch_size : int
        The node's training examples n and its expected Poisson batch size.
    local_epochs, rounds : int
        Local epochs per round and planned server rounds (>= 1 each).
    noise_multiplier : float
        σ; 0 calibrates it for ``target_epsilon`` over the whole run.
    target_epsilon : float
        ε budget of the whole run (used for calibration when σ is 0).
    target_delta : float
        δ; 0 picks :func:`fedge.shared.privacy.default_delta` of n.
    accountant : {"rdp", "prv"}

    Raises
    ------
    ConfigError
        On a count below 1, a negative σ, an invalid δ, or a target no σ
        reaches.
    """
    for name, value in (("local_epochs", local_epochs), ("rounds", rounds)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}.")
    if not noise_multiplier >= 0:
        raise ConfigError(f"noise_multiplier must be >= 0, got {noise_multiplier}.")
    delta = resolve_delta(target_delta, num_examples)
    sample_rate, steps_per_epoch = plan_sampling(
        num_examples=num_examples, batch_size=batch_size
    )
    steps_per_round = steps_per_epoch * int(local_epochs)
    sigma = noise_multiplier
    if sigma == 0:
        sigma = calibrate_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps_per_round * int(rounds),
            accountant=accountant,
        )
    return PrivacyPlan(
        noise_multiplier=float(sigma),
        sample_rate=sample_rate,
        steps_per_round=steps_per_round,
        rounds=int(rounds),
        delta=delta,
        accountant=accountant,
    )


def local_schedule(config: RunConfig, *, num_examples: int) -> LocalSchedule:
    """Return the batch size and local epochs a node of ``num_examples`` trains with.

    What the run config gives, and for ``"auto"``: under ``dp-mode =
    "sample"`` the budget-aware rule
    (:func:`fedge.shared.dp_defaults.suggest_dp_training`), otherwise fedge's plain
    defaults. The node and the coordinator both call this with the example
    count the node reports, so both plan the same schedule.
    """
    train, dp = config.train, config.dp
    if dp.mode == "sample":
        return suggest_dp_training(
            num_examples=num_examples,
            rounds=config.run.num_server_rounds,
            target_epsilon=dp.target_epsilon,
            target_delta=dp.target_delta,
            noise_multiplier=dp.noise_multiplier,
            accountant=dp.accountant,
            batch_size=train.batch_size,
            local_epochs=train.local_epochs,
        )
    return LocalSchedule(
        batch_size=PLAIN_BATCH_SIZE if train.batch_size is None else train.batch_size,
        local_epochs=PLAIN_LOCAL_EPOCHS
        if train.local_epochs is None
        else train.local_epochs,
    )


def plan_for_config(*, config: RunConfig, num_examples: int) -> PrivacyPlan:
    """:func:`plan_privacy` with every setting from the run config.

    Batch size and local epochs as :func:`local_schedule` resolves them.
    """
    schedule = local_schedule(config, num_examples=num_examples)
    return plan_privacy(
        num_examples=num_examples,
        batch_size=schedule.batch_size,
        local_epochs=schedule.local_epochs,
        rounds=config.run.num_server_rounds,
        noise_multiplier=config.dp.noise_multiplier,
        target_epsilon=config.dp.target_epsilon,
        target_delta=config.dp.target_delta,
        accountant=config.dp.accountant,
    )

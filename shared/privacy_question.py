"""``fedge privacy``'s question: ε for a DP-SGD plan, or the σ that reaches a target ε.

The plan is given either directly (sample rate and total steps) or as a
training schedule (examples, batch size, epochs, rounds); a schedule is planned
by :func:`fedge.shared.privacy_plan.plan_privacy`, the very function a node
trains, checks its budget and keeps its ledger with. The accounting is
Opacus's (:mod:`fedge.shared.privacy`, imported only when a question is
answered: it loads opacus and torch).

The fields are named after ``fedge privacy``'s flags, and so are the problems
:func:`answer` reports. :func:`suggest` answers ``fedge privacy --suggest``: the
settings the DP defaults choose for a node of N examples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedge.shared.config import RunConfig
from fedge.shared.errors import ConfigError
from fedge.shared.privacy_plan import PrivacyPlan, local_schedule, plan_privacy


@dataclass
class PrivacyQuestion:
    """A DP-SGD plan and what to compute for it (None: not given).

    Attributes
    ----------
    noise_multiplier, target_epsilon : float or None
        σ (answer ε) or a target ε (answer σ); one of them.
    sample_rate, steps : float, int or None
        The plan directly: Poisson rate q and DP-SGD steps in total.
    num_examples, batch_size, epochs, rounds : int or None
        The plan as one node's schedule (epochs and rounds default to 1).
    delta : float or None
        δ; with a schedule, None picks a power of ten ≤ 1/(10 n).
    accountant : str or None
        ``rdp`` or ``prv``; None is the run config's default.
    """

    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    sample_rate: float | None = None
    steps: int | None = None
    num_examples: int | None = None
    batch_size: int | None = None
    epochs: int | None = None
    rounds: int | None = None
    delta: float | None = None
    accountant: str | None = None


def fill_from_run_config(
    question: PrivacyQuestion, load_config: Callable[[], RunConfig]
) -> None:
    """Fill the plan from a run config, as a node of ``num_examples`` would run it.

    ``load_config`` reads the config, once ``num_examples`` is known to be given.

    Raises
    ------
    ConfigError
        Without ``num_examples``.
    """
    if question.num_examples is None:
        raise ConfigError(
            "--config needs --num-examples: this node's training examples."
        )
    config = load_config()
    schedule = local_schedule(config, num_examples=question.num_examples)
    question.batch_size = schedule.batch_size
    question.epochs = schedule.local_epochs
    question.rounds = config.run.num_server_rounds
    question.accountant = config.dp.accountant
    if question.delta is None and config.dp.target_delta > 0:
        question.delta = config.dp.target_delta
    if question.noise_multiplier is None and question.target_epsilon is None:
        if config.dp.noise_multiplier > 0:
            question.noise_multiplier = config.dp.noise_multiplier
        else:
            question.target_epsilon = config.dp.target_epsilon


def answer(question: PrivacyQuestion, *, default_accountant: str) -> dict[str, Any]:
    """Return ε, δ, σ, q, steps and the accountant of the plan (``--format json``).

    Raises
    ------
    ConfigError
        A plan described both ways or incompletely, a value out of range, or a
        target no σ reaches.
    """
    from fedge.shared import privacy  # imports opacus and torch: only when run

    q = question
    q.epochs = 1 if q.epochs is None else q.epochs
    q.rounds = 1 if q.rounds is None else q.rounds
    q.accountant = q.accountant or default_accountant
    if q.noise_multiplier is None and q.target_epsilon is None:
        raise ConfigError("give --noise-multiplier or --target-epsilon (or --config).")

    node_plan = _node_plan(q)
    if node_plan is not None:
        # The very function a node's training, budget check and ledger use.
        sample_rate, steps = node_plan.sample_rate, node_plan.total_steps
        delta, sigma = node_plan.delta, node_plan.noise_multiplier
        return _result(q, privacy, sigma, sample_rate, steps, delta)
    sample_rate, steps, delta = _plan(q, privacy)
    if q.target_epsilon is not None:
        sigma = privacy.calibrate_noise_multiplier(
            target_epsilon=q.target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=q.accountant,
        )
    elif q.noise_multiplier is not None and q.noise_multiplier >= 0:
        sigma = q.noise_multiplier
    else:
        raise ConfigError(f"--noise-multiplier must be >= 0, got {q.noise_multiplier}.")
    return _result(q, privacy, sigma, sample_rate, steps, delta)


def _result(
    q: PrivacyQuestion,
    privacy: Any,
    sigma: float,
    sample_rate: float,
    steps: int,
    delta: float,
) -> dict[str, Any]:
    epsilon = privacy.epsilon_for(
        history=[(sigma, sample_rate, steps)], delta=delta, accountant=q.accountant
    )
    return {
        "epsilon": epsilon,
        "delta": delta,
        "noise_multiplier": sigma,
        "sample_rate": sample_rate,
        "steps": steps,
        "accountant": q.accountant,
        "target_epsilon": q.target_epsilon,
    }


def _node_plan(q: PrivacyQuestion) -> PrivacyPlan | None:
    """Return the node's plan (:func:`plan_privacy`) for a schedule.

    None when the plan is given as --sample-rate/--steps, or with an explicit
    --noise-multiplier 0 (no noise: ε is infinite, nothing to plan).
    """
    if q.num_examples is None or q.batch_size is None:
        return None
    if q.sample_rate is not None or q.steps is not None:
        return None  # _plan refuses the mix
    if q.noise_multiplier is not None and not q.noise_multiplier > 0:
        return None
    epochs, rounds = _schedule_counts(q)
    return plan_privacy(
        num_examples=q.num_examples,
        batch_size=q.batch_size,
        local_epochs=epochs,
        rounds=rounds,
        noise_multiplier=q.noise_multiplier or 0.0,
        target_epsilon=q.target_epsilon or 0.0,
        target_delta=q.delta if q.delta is not None else 0.0,
        accountant=str(q.accountant),
    )


def _schedule_counts(q: PrivacyQuestion) -> tuple[int, int]:
    epochs, rounds = int(q.epochs or 0), int(q.rounds or 0)
    for name, value in (("--epochs", epochs), ("--rounds", rounds)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}.")
    return epochs, rounds


def _plan(q: PrivacyQuestion, privacy: Any) -> tuple[float, int, float]:
    """(sample rate, total steps, δ) from either way of describing the plan."""
    direct = q.sample_rate is not None or q.steps is not None
    schedule = q.num_examples is not None or q.batch_size is not None
    if direct and schedule:
        raise ConfigError(
            "give the plan either as --sample-rate/--steps or as "
            "--num-examples/--batch-size/--epochs/--rounds, not both."
        )
    if schedule:
        if q.num_examples is None or q.batch_size is None:
            raise ConfigError("--num-examples and --batch-size go together.")
        epochs, rounds = _schedule_counts(q)
        sample_rate, per_epoch = privacy.plan_sampling(
            num_examples=q.num_examples, batch_size=q.batch_size
        )
        steps = per_epoch * epochs * rounds
        if q.delta is None:
            return sample_rate, steps, privacy.default_delta(q.num_examples)
        privacy.check_delta(q.delta, num_examples=q.num_examples)
        return sample_rate, steps, q.delta
    if q.sample_rate is None or q.steps is None:
        raise ConfigError(
            "describe the plan: --sample-rate and --steps, or --num-examples and "
            "--batch-size (with --epochs and --rounds)."
        )
    if not 0 < q.sample_rate <= 1:
        raise ConfigError(f"--sample-rate must be in (0, 1], got {q.sample_rate}.")
    if q.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {q.steps}.")
    if q.delta is None:
        raise ConfigError("--delta is required with --sample-rate/--steps.")
    privacy.check_delta(q.delta)
    return q.sample_rate, q.steps, q.delta


def suggest(*, num_examples: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """Return the rule's settings for a node of ``num_examples``, and their σ and ε.

    Parameters
    ----------
    num_examples : int
        The node's training examples (as it reports them, ``num-examples``).
    overrides : dict
        Run-config keys over the defaults (``dp-mode`` is ``"sample"``).

    Raises
    ------
    ConfigError
        On an invalid run config or example count, or a budget no σ reaches.
    """
    from fedge.shared.config import AUTO_KEYS, default_run_config, from_run_config
    from fedge.shared.dp_defaults import AUTO
    from fedge.shared.privacy import epsilon_for
    from fedge.shared.privacy_plan import local_schedule, plan_for_config

    if isinstance(num_examples, bool) or num_examples < 1:
        raise ConfigError(
            f"--num-examples must be >= 1 (the node's training examples), got "
            f"{num_examples}."
        )
    config = from_run_config(overrides, fill_defaults=True)
    schedule = local_schedule(config, num_examples=num_examples)
    plan = plan_for_config(config=config, num_examples=num_examples)
    epsilon = epsilon_for(
        history=[(plan.noise_multiplier, plan.sample_rate, plan.total_steps)],
        delta=plan.delta,
        accountant=plan.accountant,
    )
    return {
        "num_examples": num_examples,
        "batch_size": schedule.batch_size,
        "sample_rate": plan.sample_rate,
        "local_epochs": schedule.local_epochs,
        "steps_per_round": plan.steps_per_round,
        "rounds": plan.rounds,
        "steps": plan.total_steps,
        "learning_rate": config.train.learning_rate,
        "max_grad_norm": config.dp.max_grad_norm,
        "momentum": config.train.momentum,
        "activation": config.train.activation,
        "ema_decay": config.train.ema_decay,
        "noise_multiplier": plan.noise_multiplier,
        "epsilon": epsilon,
        "delta": plan.delta,
        "target_epsilon": config.dp.target_epsilon,
        "accountant": plan.accountant,
        "chosen_by_rule": [
            key
            for key in AUTO_KEYS
            if {**default_run_config(), **overrides}.get(key) == AUTO
        ],
    }

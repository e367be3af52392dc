"""``fedge privacy --suggest``: the DP defaults a node of N examples trains with.

The numbers come from the very functions a node and the coordinator plan with
(:func:`fedge.shared.privacy_plan.local_schedule` and
:func:`fedge.shared.privacy_plan.plan_for_config`), on the run config a run with
``dp-mode = "sample"`` would have: the defaults, a ``--config`` file's keys,
then the flags given. Keys given there win over the rule, as in a run.
"""

from __future__ import annotations

import argparse
from typing import Any

from fedge.shared.errors import ConfigError

# Flag -> the run-config key it sets (when given).
_FLAG_KEYS = {
    "rounds": "num-server-rounds",
    "target_epsilon": "target-epsilon",
    "noise_multiplier": "noise-multiplier",
    "delta": "target-delta",
    "accountant": "accountant",
    "batch_size": "batch-size",
    "epochs": "local-epochs",
}


def read_run_config(path: str) -> dict[str, Any]:
    """Return the run-config keys of a run-config TOML or scenario file.

    ``path`` may also name a packaged scenario; its simulation and ``fault-*``
    keys are left out (they do not change a node's plan).

    Raises
    ------
    FedgeError
        If the file cannot be read.
    ConfigError
        If it holds a key nothing knows.
    """
    from fedge.simulations.fault_injection import split_fault_keys
    from fedge.simulations.scenario_file import read_scenario

    overrides, _ = split_fault_keys(read_scenario(path).overrides)
    return overrides


def suggestion_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Return the run-config overrides of a ``--suggest`` command line.

    Those of ``--config`` (:func:`read_run_config`), then the flags given.
    """
    overrides = read_run_config(args.config) if args.config else {}
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    overrides["dp-mode"] = "sample"
    return overrides


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


def format_suggestion(result: dict[str, Any]) -> str:
    """Return the text ``fedge privacy --suggest`` prints."""
    r = result
    chosen = ", ".join(r["chosen_by_rule"]) or "none (all given)"
    return "\n".join(
        [
            f"DP-SGD defaults for a node of {r['num_examples']} examples, "
            f"{r['rounds']} rounds, ε ≤ {r['target_epsilon']:g}:",
            f"  batch size      {r['batch_size']} (sample rate q = "
            f"{r['sample_rate']:.6g})",
            f"  local epochs    {r['local_epochs']} ({r['steps_per_round']} steps a "
            f"round, {r['steps']} in all)",
            f"  learning rate   {r['learning_rate']:g} (max-grad-norm "
            f"{r['max_grad_norm']:g}, momentum {r['momentum']:g})",
            f"  activation      {r['activation']}",
            f"  σ               {r['noise_multiplier']:.6g} → ε = "
            f"{r['epsilon']:.4f} at δ = {r['delta']:g} ({r['accountant']} "
            "accountant)",
            f"  chosen by the rule: {chosen}",
        ]
    )

"""``fedge privacy --suggest``: the DP defaults a node of N examples trains with.

The numbers come from :func:`fedge.shared.privacy_question.suggest` (the very
functions a node and the coordinator plan with), on the run config a run with
``dp-mode = "sample"`` would have: the defaults, a ``--config`` file's keys,
then the flags given. Keys given there win over the rule, as in a run. This
module turns the command line into those keys and the result into text.
"""

from __future__ import annotations

import argparse
from typing import Any

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
    from fedge.simulations.fault_config import split_fault_keys
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

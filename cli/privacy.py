"""``fedge privacy``: ε for a DP-SGD plan, or the noise multiplier for a target ε.

Describe the plan either directly (``--sample-rate Q --steps T``) or as a
training schedule (``--num-examples N --batch-size B --epochs E --rounds R``),
which gives ``Q = min(1, B / N)`` and ``T = round(1 / Q) * E * R`` by the
very function a node trains, checks its budget and keeps its ledger with
(:func:`fedge.shared.privacy_plan.plan_privacy`).
Then ``--noise-multiplier S`` prints ε; ``--target-epsilon E`` prints the σ
that reaches it. The accounting is Opacus's (RDP or PRV accountant).
``--suggest --num-examples N`` prints the settings a node of N examples trains
with under ``dp-mode = "sample"`` and the run's defaults (the budget-aware
rule, :mod:`fedge.shared.dp_defaults`), and the σ they imply
(:mod:`fedge.cli.privacy_suggest`).

Opacus (and torch) are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from fedge.shared.config import ACCOUNTANTS, default_run_config
from fedge.shared.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fedge privacy``."""
    p = subparsers.add_parser(
        "privacy",
        help="ε of a DP-SGD plan, or the noise multiplier for a target ε",
        description=(
            "Compute ε for a DP-SGD plan (--noise-multiplier), or the noise "
            "multiplier that reaches a target ε (--target-epsilon), with Opacus's "
            "accountants. Give the plan as --sample-rate and --steps, or as "
            "--num-examples/--batch-size/--epochs/--rounds: sample rate = "
            "min(1, batch-size / num-examples), steps = round(1 / sample rate) "
            "* epochs * rounds."
        ),
    )
    p.add_argument(
        "--suggest",
        action="store_true",
        help="with --num-examples: print the batch size, local epochs, learning "
        "rate and activation the DP defaults choose for a node of that many "
        "examples (dp-mode = sample, the run config of --config and the flags "
        "given winning over the rule), with the σ and ε they imply",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="a run-config TOML (scenario file): batch size, local epochs, rounds, "
        "noise multiplier or target ε, δ and accountant come from it and the "
        "defaults; give --num-examples for this node",
    )
    goal = p.add_mutually_exclusive_group()
    goal.add_argument(
        "--noise-multiplier",
        type=float,
        metavar="S",
        help="σ: noise std divided by the clipping norm; prints ε",
    )
    goal.add_argument(
        "--target-epsilon",
        type=float,
        metavar="E",
        help="ε budget for the whole plan; prints the σ needed",
    )
    p.add_argument(
        "--sample-rate",
        type=float,
        metavar="Q",
        help="Poisson sampling rate per step, in (0, 1]",
    )
    p.add_argument("--steps", type=int, metavar="T", help="DP-SGD steps in total")
    p.add_argument(
        "--num-examples",
        type=int,
        metavar="N",
        help="training examples on one node (instead of Q and T)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        help="expected batch size (with --num-examples)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        metavar="E",
        help="local epochs per round (with --num-examples; default: 1, with "
        "--suggest the rule's)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        metavar="R",
        help="server rounds the node trains in (with --num-examples; default: 1, "
        "with --suggest num-server-rounds)",
    )
    p.add_argument(
        "--delta",
        type=float,
        metavar="D",
        help="δ; default with --num-examples: a power of ten <= 1/(10 N)",
    )
    accountant = default_run_config()["accountant"]
    p.add_argument(
        "--accountant",
        choices=ACCOUNTANTS,
        help=f"Opacus accountant (default: {accountant}; prv is tighter, slower)",
    )
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="output format (default: text)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print ε or σ for the plan in ``args``; raises ConfigError on bad input."""
    if args.suggest:
        return run_suggest(args)
    result = compute(args)
    if args.format == "json":
        print(json.dumps(result, sort_keys=True))
    elif result["target_epsilon"] is None:
        print(
            f"ε = {result['epsilon']:.4f} at δ = {result['delta']:g} "
            f"({result['accountant']} accountant; σ = {result['noise_multiplier']:g}, "
            f"q = {result['sample_rate']:.6g}, {result['steps']} steps)"
        )
    else:
        print(
            f"σ = {result['noise_multiplier']:.6g} reaches ε = {result['epsilon']:.4f} "
            f"<= {result['target_epsilon']:g} at δ = {result['delta']:g} "
            f"({result['accountant']} accountant; q = {result['sample_rate']:.6g}, "
            f"{result['steps']} steps)"
        )
    return 0


def run_suggest(args: argparse.Namespace) -> int:
    """Print the DP defaults for ``--num-examples`` (``--suggest``)."""
    from fedge.cli.privacy_suggest import (
        format_suggestion,
        suggest,
        suggestion_overrides,
    )

    if args.num_examples is None:
        raise ConfigError(
            "--suggest needs --num-examples: the training examples of one node."
        )
    if args.sample_rate is not None or args.steps is not None:
        raise ConfigError(
            "--suggest chooses the sample rate and steps itself; drop "
            "--sample-rate/--steps."
        )
    result = suggest(
        num_examples=args.num_examples, overrides=suggestion_overrides(args)
    )
    if args.format == "json":
        print(json.dumps(result, sort_keys=True))
    else:
        print(format_suggestion(result))
    return 0


def apply_run_config(args: argparse.Namespace) -> None:
    """Fill the plan from a run config (``--config``), as a node would run it."""
    from fedge.cli.privacy_suggest import read_run_config
    from fedge.shared.config import from_run_config
    from fedge.shared.privacy_plan import local_schedule

    if args.num_examples is None:
        raise ConfigError(
            "--config needs --num-examples: this node's training examples."
        )
    config = from_run_config(read_run_config(args.config), fill_defaults=True)
    schedule = local_schedule(config, num_examples=args.num_examples)
    args.batch_size = schedule.batch_size
    args.epochs = schedule.local_epochs
    args.rounds = config.run.num_server_rounds
    args.accountant = config.dp.accountant
    if args.delta is None and config.dp.target_delta > 0:
        args.delta = config.dp.target_delta
    if args.noise_multiplier is None and args.target_epsilon is None:
        if config.dp.noise_multiplier > 0:
            args.noise_multiplier = config.dp.noise_multiplier
        else:
            args.target_epsilon = config.dp.target_epsilon


def compute(args: argparse.Namespace) -> dict[str, Any]:
    """Return the numbers ``run`` prints, as a dict (the ``--format json`` output)."""
    from fedge.shared import privacy  # imports opacus and torch: only when run

    if getattr(args, "config", None):
        apply_run_config(args)
    args.epochs = 1 if args.epochs is None else args.epochs
    args.rounds = 1 if args.rounds is None else args.rounds
    args.accountant = args.accountant or default_run_config()["accountant"]
    if args.noise_multiplier is None and args.target_epsilon is None:
        raise ConfigError("give --noise-multiplier or --target-epsilon (or --config).")

    node_plan = _node_plan(args)
    if node_plan is not None:
        # The very function a node's training, budget check and ledger use.
        sample_rate, steps = node_plan.sample_rate, node_plan.total_steps
        delta, sigma = node_plan.delta, node_plan.noise_multiplier
        return _result(args, privacy, sigma, sample_rate, steps, delta)
    sample_rate, steps, delta = _plan(args, privacy)
    if args.target_epsilon is not None:
        sigma = privacy.calibrate_noise_multiplier(
            target_epsilon=args.target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=args.accountant,
        )
    else:
        sigma = args.noise_multiplier
        if not sigma >= 0:
            raise ConfigError(f"--noise-multiplier must be >= 0, got {sigma}.")
    return _result(args, privacy, sigma, sample_rate, steps, delta)


def _result(
    args: argparse.Namespace,
    privacy: Any,
    sigma: float,
    sample_rate: float,
    steps: int,
    delta: float,
) -> dict[str, Any]:
    epsilon = privacy.epsilon_for(
        history=[(sigma, sample_rate, steps)], delta=delta, accountant=args.accountant
    )
    return {
        "epsilon": epsilon,
        "delta": delta,
        "noise_multiplier": sigma,
        "sample_rate": sample_rate,
        "steps": steps,
        "accountant": args.accountant,
        "target_epsilon": args.target_epsilon,
    }


def _node_plan(args: argparse.Namespace) -> Any:
    """Return the node's plan (:func:`fedge.shared.privacy_plan.plan_privacy`) for a schedule.

    None when the plan is given as --sample-rate/--steps, or with an explicit
    --noise-multiplier 0 (no noise: ε is infinite, nothing to plan).
    """
    from fedge.shared.privacy_plan import plan_privacy

    if args.num_examples is None or args.batch_size is None:
        return None
    if args.sample_rate is not None or args.steps is not None:
        return None  # _plan refuses the mix
    if args.noise_multiplier is not None and not args.noise_multiplier > 0:
        return None
    for name, value in (("--epochs", args.epochs), ("--rounds", args.rounds)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}.")
    return plan_privacy(
        num_examples=args.num_examples,
        batch_size=args.batch_size,
        local_epochs=args.epochs,
        rounds=args.rounds,
        noise_multiplier=args.noise_multiplier or 0.0,
        target_epsilon=args.target_epsilon or 0.0,
        target_delta=args.delta if args.delta is not None else 0.0,
        accountant=args.accountant,
    )


def _plan(args: argparse.Namespace, privacy: Any) -> tuple[float, int, float]:
    """(sample rate, total steps, δ) from either way of describing the plan."""
    direct = args.sample_rate is not None or args.steps is not None
    schedule = args.num_examples is not None or args.batch_size is not None
    if direct and schedule:
        raise ConfigError(
            "give the plan either as --sample-rate/--steps or as "
            "--num-examples/--batch-size/--epochs/--rounds, not both."
        )
    if schedule:
        if args.num_examples is None or args.batch_size is None:
            raise ConfigError("--num-examples and --batch-size go together.")
        for name, value in (("--epochs", args.epochs), ("--rounds", args.rounds)):
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}.")
        sample_rate, per_epoch = privacy.plan_sampling(
            num_examples=args.num_examples, batch_size=args.batch_size
        )
        steps = per_epoch * args.epochs * args.rounds
        if args.delta is None:
            return sample_rate, steps, privacy.default_delta(args.num_examples)
        privacy.check_delta(args.delta, num_examples=args.num_examples)
        return sample_rate, steps, args.delta
    if args.sample_rate is None or args.steps is None:
        raise ConfigError(
            "describe the plan: --sample-rate and --steps, or --num-examples and "
            "--batch-size (with --epochs and --rounds)."
        )
    if not 0 < args.sample_rate <= 1:
        raise ConfigError(f"--sample-rate must be in (0, 1], got {args.sample_rate}.")
    if args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}.")
    if args.delta is None:
        raise ConfigError("--delta is required with --sample-rate/--steps.")
    privacy.check_delta(args.delta)
    return args.sample_rate, args.steps, args.delta

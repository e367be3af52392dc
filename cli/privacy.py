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

from fedge.shared.config import default_run_config
from fedge.shared.errors import ConfigError
from fedge.shared.privacy import ACCOUNTANTS


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
    from fedge.cli.privacy_suggest import format_suggestion, suggestion_overrides
    from fedge.shared.privacy_question import suggest

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


def compute(args: argparse.Namespace) -> dict[str, Any]:
    """Return the numbers ``run`` prints, as a dict (the ``--format json`` output)."""
    from dataclasses import fields

    from fedge.shared.privacy_question import (
        PrivacyQuestion,
        answer,
        fill_from_run_config,
    )

    # The question's fields are the flags' names.
    question = PrivacyQuestion(
        **{f.name: getattr(args, f.name) for f in fields(PrivacyQuestion)}
    )
    if getattr(args, "config", None):
        from fedge.cli.privacy_suggest import read_run_config
        from fedge.shared.config import from_run_config

        fill_from_run_config(
            question,
            lambda: from_run_config(read_run_config(args.config), fill_defaults=True),
        )
    return answer(question, default_accountant=default_run_config()["accountant"])

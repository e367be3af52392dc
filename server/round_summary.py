"""What each round leaves in the metrics history, and when a run must stop early.

Pure functions over a round's outcome (:class:`~fedge.server.federation_loop.RoundOutcome`,
the one carrier of its counts and per-client rows), so the figures a person
reads in ``metrics.csv`` are computed in one place.
"""

from __future__ import annotations

import math
from typing import Any

from flwr.serverapp import Grid

from fedge.server.federation_loop import RoundOutcome
from fedge.server.metrics_history import summarize_clients
from fedge.server.reply_errors import count_errors
from fedge.shared import keys
from fedge.shared.config import RunConfig
from fedge.shared.fairness import fairness_summary
from fedge.shared.run_folder import (
    AGGREGATED,
    BYTES_RECEIVED,
    BYTES_SENT,
    CENTRAL_DP_DELTA,
    CENTRAL_PREFIX,
    CLIENT_EVALUATION,
    CLIENT_EVALUATION_S,
    CLIENTS,
    DROPPED,
    EPSILON_MAX,
    EPSILON_MEAN,
    FAILURES,
    FED_EVAL_ACCURACY,
    FED_EVAL_LOSS,
    REFUSED,
    REPLIES,
    REPLY_ERRORS,
    ROUND,
    ROUND_TIME_S,
    SAMPLED,
    SAMPLED_NODES,
    TRAIN_LOSS,
    PrivacySummary,
)

NAN = float("nan")


def initial_row(central: dict[str, float]) -> dict[str, Any]:
    """Round 0: the initial global model, evaluated centrally."""
    return {ROUND: 0, **{CENTRAL_PREFIX + k: v for k, v in central.items()}}


def round_row(
    outcome: RoundOutcome,
    *,
    fairness_threshold: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the metrics row of one round and its per-client details (``metrics.jsonl``).

    A round whose global model was scored on every node adds the fairness
    summary (:func:`fedge.shared.fairness.fairness_summary` at ``fairness_threshold``)
    to the row and each node's figures to the details. The round's error
    replies go to the details, each distinct error line with the number of
    nodes that replied it.
    """
    clients = outcome.clients
    epsilon_max, epsilon_mean = summarize_clients(clients, keys.EPSILON)
    row: dict[str, Any] = {ROUND: outcome.server_round}
    row.update({CENTRAL_PREFIX + k: v for k, v in outcome.central.items()})
    row[TRAIN_LOSS] = outcome.train_metrics.get(keys.TRAIN_LOSS, NAN)
    row[FED_EVAL_LOSS] = outcome.evaluate_metrics.get(keys.EVAL_LOSS, NAN)
    row[FED_EVAL_ACCURACY] = outcome.evaluate_metrics.get(keys.EVAL_ACCURACY, NAN)
    row.update(
        {
            SAMPLED: outcome.sampled,
            REPLIES: outcome.replies,
            FAILURES: outcome.failures,
            DROPPED: outcome.dropped,
            REFUSED: outcome.refused,
            AGGREGATED: outcome.aggregated,
            EPSILON_MAX: _or_nan(epsilon_max),
            EPSILON_MEAN: _or_nan(epsilon_mean),
            ROUND_TIME_S: round(outcome.round_time_s, 3),
            BYTES_SENT: outcome.bytes_sent,
            BYTES_RECEIVED: outcome.bytes_received,
        }
    )
    details = {CLIENTS: clients, SAMPLED_NODES: outcome.sampled_nodes}
    if outcome.reply_errors:
        details[REPLY_ERRORS] = count_errors(outcome.reply_errors)
    if outcome.client_evaluation is not None:
        row.update(
            fairness_summary(
                [c["accuracy"] for c in outcome.client_evaluation],
                threshold=fairness_threshold,
            )
        )
        row[CLIENT_EVALUATION_S] = round(outcome.client_evaluation_s, 3)
        details[CLIENT_EVALUATION] = outcome.client_evaluation
    return row, details


def central_epsilon(
    config: RunConfig, *, server_round: int, sampled: int, num_nodes: int
) -> tuple[float, float]:
    """User-level (ε, δ) of central DP after ``server_round`` rounds.

    Flower's server-side fixed-clipping wrapper adds Gaussian noise of std
    ``σ·C/m`` to the mean of ``m`` clipped updates each round; with ``m`` of ``N``
    nodes sampled per round this is the subsampled Gaussian mechanism of
    DP-FedAvg (McMahan et al., 2018), accounted with Opacus's RDP accountant at
    sampling rate ``q = m / N``. (Flower samples without replacement; the
    Poisson analysis is the customary approximation.) δ defaults below 1/N.
    """
    from fedge.shared.privacy import default_delta, epsilon_for

    delta = config.dp.target_delta or default_delta(num_nodes)
    sample_rate = min(1.0, sampled / max(num_nodes, 1))
    epsilon = epsilon_for(
        history=[(config.dp.noise_multiplier, sample_rate, server_round)],
        delta=delta,
        accountant=config.dp.accountant,
    )
    return epsilon, delta


def _or_nan(value: float | None) -> float:
    return NAN if value is None else float(value)


def stop_reason(
    refused_nodes: frozenset[int], config: RunConfig, server_round: int, grid: Grid
) -> str | None:
    """Why the run must stop after ``server_round``, or None if it goes on.

    It stops when the connected nodes that have not refused (privacy budget
    spent; ``refused_nodes``, :attr:`fedge.server.reply_check.ReplyCheck.refused_nodes`)
    are fewer than ``min-replies``: later rounds could not aggregate anything.
    The last planned round is not an early stop: None.
    """
    if server_round >= config.run.num_server_rounds or not refused_nodes:
        return None
    connected = set(grid.get_node_ids())
    can_train = connected - refused_nodes
    if len(can_train) >= config.run.min_replies:
        return None
    return (
        f"after round {server_round}, {len(refused_nodes)} of {len(connected)} "
        f"nodes have spent their privacy budget (target-epsilon {config.dp.target_epsilon}); "
        f"{len(can_train)} can still train, fewer than min-replies = {config.run.min_replies}"
    )


def privacy_summary(config: RunConfig, records: list[dict[str, Any]]) -> PrivacySummary:
    """Return the privacy figures that travel with the model (``model.json``, ONNX metadata).

    Sample-level DP reports the largest cumulative ε any client reached; the
    noise multiplier and δ come from the clients' replies. Central DP reports
    the run's user-level ε and δ as the rounds recorded them.
    """
    if config.dp.mode == "sample":
        clients = [c for r in records for c in r.get(CLIENTS, []) if keys.EPSILON in c]
        epsilons = [float(c[keys.EPSILON]) for c in clients if _finite(c[keys.EPSILON])]
        return PrivacySummary(
            dp_mode=config.dp.mode,
            epsilon_max=max(epsilons) if epsilons else None,
            delta=max(
                (float(c[keys.DELTA]) for c in clients if keys.DELTA in c),
                default=None,
            ),
            noise_multiplier=min(
                (
                    float(c[keys.NOISE_MULTIPLIER])
                    for c in clients
                    if keys.NOISE_MULTIPLIER in c
                ),
                default=None,
            ),
            max_grad_norm=config.dp.max_grad_norm,
            extra={"accountant": config.dp.accountant},
        )
    if config.dp.mode == "central":
        eps = [float(r[EPSILON_MAX]) for r in records if _finite(r.get(EPSILON_MAX))]
        deltas = [
            float(r[CENTRAL_DP_DELTA])
            for r in records
            if _finite(r.get(CENTRAL_DP_DELTA))
        ]
        return PrivacySummary(
            dp_mode=config.dp.mode,
            epsilon_max=max(eps) if eps else None,
            delta=max(deltas) if deltas else None,
            noise_multiplier=config.dp.noise_multiplier,
            extra={"clipping-norm": config.dp.clipping_norm, "level": "user"},
        )
    return PrivacySummary(dp_mode=config.dp.mode)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)

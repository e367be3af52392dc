"""Build the aggregation strategy the run config names, from Flower's own classes.

Nothing here aggregates: each name maps to a class of ``flwr.serverapp.strategy``
and its parameters. ``dp-mode = "central"`` wraps the strategy in Flower's
``DifferentialPrivacyServerSideFixedClipping``. The factory refuses settings
under which Flower would build a strategy that cannot work, such as Bulyan with
too few nodes per round, which Flower only notices by skipping every round.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
    Strategy,
)

from fedge.shared import keys
from fedge.shared.config import NON_MEAN_AGGREGATORS, RunConfig, StrategyConfig
from fedge.shared.errors import ConfigError

logger = logging.getLogger(__name__)

ROBUST_AGGREGATORS = ("krum", "multikrum", "bulyan")


def planned_sample_size(st: StrategyConfig, num_nodes_hint: int | None) -> int:
    """Nodes Flower samples per training round: ``max(int(N * fraction), min)``.

    Without a hint of the federation size N, ``min-nodes`` is the one number
    every round is guaranteed to reach.
    """
    if num_nodes_hint is None:
        return st.min_nodes
    return max(int(num_nodes_hint * st.fraction_train), st.min_nodes)


def build_strategy(config: RunConfig, *, num_nodes_hint: int | None = None) -> Strategy:
    """Return the Flower strategy ``config.strategy`` describes.

    Parameters
    ----------
    config : RunConfig
        The validated run configuration.
    num_nodes_hint : int, optional
        Expected number of connected nodes (e.g. ``num-supernodes`` in
        simulation). Used to check robust aggregators' node requirements and
        to tell central DP how many clients are sampled per round; without it,
        ``min-nodes`` is assumed.

    Returns
    -------
    flwr.serverapp.strategy.Strategy
        Flower's own strategy, wrapped in
        ``DifferentialPrivacyServerSideFixedClipping`` when ``dp-mode`` is
        ``"central"``.

    Raises
    ------
    ConfigError
        For an unknown strategy name, or parameters the chosen strategy cannot
        work with (all problems at once).
    """
    st = config.strategy
    if st.name not in _BUILDERS:
        raise ConfigError(
            f"'strategy' must be one of {list(_BUILDERS)}, got {st.name!r}."
        )
    n = planned_sample_size(st, num_nodes_hint)
    problems = _check(config, n, num_nodes_hint)
    if problems:
        raise ConfigError(
            f"Cannot build strategy {st.name!r}:\n  - " + "\n  - ".join(problems)
        )
    common: dict[str, Any] = {
        "fraction_train": st.fraction_train,
        "fraction_evaluate": st.fraction_evaluate,
        "min_train_nodes": st.min_nodes,
        "min_evaluate_nodes": st.min_nodes,
        "min_available_nodes": st.min_nodes,
        "weighted_by_key": keys.NUM_EXAMPLES,
    }
    try:
        strategy = _BUILDERS[st.name](config, common)
    except ValueError as e:  # Flower's own parameter checks
        raise ConfigError(f"Flower refused strategy {st.name!r}: {e}") from e
    _warn_if_degenerate(st, n)
    if config.dp.mode == "central":
        try:
            strategy = DifferentialPrivacyServerSideFixedClipping(
                strategy,
                noise_multiplier=config.dp.noise_multiplier,
                clipping_norm=config.dp.clipping_norm,
                num_sampled_clients=n,
            )
        except ValueError as e:
            raise ConfigError(f"Flower refused central DP settings: {e}") from e
    return strategy


def _check(config: RunConfig, n: int, num_nodes_hint: int | None) -> list[str]:
    """Problems Flower would not report, or only by skipping rounds."""
    st = config.strategy
    f = st.num_malicious_nodes
    p: list[str] = []
    if num_nodes_hint is not None and num_nodes_hint < st.min_nodes:
        p.append(
            f"'min-nodes' = {st.min_nodes} but the federation has {num_nodes_hint} "
            "nodes: every round would wait for nodes that never connect"
        )
    if f < 0:
        p.append(f"'num-malicious-nodes' must be >= 0, got {f}")
    if st.name in ("krum", "multikrum") and n < 2 * f + 3:
        # Blanchard et al. (2017): Krum's guarantee needs n > 2f + 2.
        p.append(
            f"{st.name} needs at least 2 * num-malicious-nodes + 3 = {2 * f + 3} "
            f"nodes per round, got {n} (min-nodes = {st.min_nodes}); raise "
            "'min-nodes' or lower 'num-malicious-nodes'"
        )
    if st.name == "bulyan" and n < 4 * f + 3:
        # El Mhamdi et al. (2018); Flower skips aggregation below this.
        p.append(
            f"bulyan needs at least 4 * num-malicious-nodes + 3 = {4 * f + 3} nodes "
            f"per round, got {n} (min-nodes = {st.min_nodes}); raise 'min-nodes' "
            "or lower 'num-malicious-nodes'"
        )
    if st.name == "multikrum":
        if st.num_nodes_to_select < 0:
            p.append(
                f"'num-nodes-to-select' must be >= 0, got {st.num_nodes_to_select}"
            )
        elif st.num_nodes_to_select > n - f:
            p.append(
                f"'num-nodes-to-select' = {st.num_nodes_to_select} exceeds nodes per "
                f"round minus num-malicious-nodes = {n} - {f} = {n - f}"
            )
    if config.dp.mode == "central" and st.name in NON_MEAN_AGGREGATORS:
        p.append(f"dp-mode 'central' does not compose with {st.name!r} (not a mean)")
    return p


def _warn_if_degenerate(st: StrategyConfig, n: int) -> None:
    """Legal settings that silently turn a strategy into another one."""
    if st.name == "fedtrimmedavg" and int(st.trim_beta * n) == 0:
        logger.warning(
            "trim-beta %g with %d nodes per round trims int(%g * %d) = 0 updates "
            "from each end: FedTrimmedAvg computes the plain mean",
            st.trim_beta,
            n,
            st.trim_beta,
            n,
        )
    if st.num_malicious_nodes and st.name not in ROBUST_AGGREGATORS:
        logger.warning(
            "'num-malicious-nodes' = %d is ignored by %s; only krum, multikrum "
            "and bulyan use it",
            st.num_malicious_nodes,
            st.name,
        )


def _fedopt_args(config: RunConfig, *, betas: bool) -> dict[str, Any]:
    st = config.strategy
    args: dict[str, Any] = {
        "eta": st.server_learning_rate,
        "eta_l": config.train.learning_rate,  # Flower only logs it
        "tau": st.tau,
    }
    if betas:  # FedAdagrad keeps no first/second-moment decay
        args["beta_1"] = st.server_momentum_beta1
        args["beta_2"] = st.server_momentum_beta2
    return args


def effective_learning_rate(config: RunConfig) -> float:
    """Return the clients' step size, as q-FedAvg's Lipschitz estimate needs it.

    q-FedAvg reads a node's update ``w - w_k`` as ``lr`` times a gradient
    (``L = 1 / lr``). With heavy-ball momentum β, SGD's steady-state step is
    ``lr / (1 - β)``: taking the bare ``lr`` would overestimate L by ``1 / (1 -
    β)`` (10 times at the default β = 0.9) and shrink every q-FedAvg step.
    """
    return config.train.learning_rate / (1.0 - config.train.momentum)


def _multikrum(config: RunConfig, common: dict[str, Any]) -> Strategy:
    st = config.strategy
    extra: dict[str, Any] = {"num_malicious_nodes": st.num_malicious_nodes}
    if st.num_nodes_to_select > 0:  # 0 keeps Flower's default
        extra["num_nodes_to_select"] = st.num_nodes_to_select
    return MultiKrum(**common, **extra)


_BUILDERS: dict[str, Callable[[RunConfig, dict[str, Any]], Strategy]] = {
    "fedavg": lambda c, kw: FedAvg(**kw),
    "fedprox": lambda c, kw: FedProx(**kw, proximal_mu=c.strategy.proximal_mu),
    "fedadam": lambda c, kw: FedAdam(**kw, **_fedopt_args(c, betas=True)),
    "fedyogi": lambda c, kw: FedYogi(**kw, **_fedopt_args(c, betas=True)),
    "fedadagrad": lambda c, kw: FedAdagrad(**kw, **_fedopt_args(c, betas=False)),
    "fedmedian": lambda c, kw: FedMedian(**kw),
    "fedtrimmedavg": lambda c, kw: FedTrimmedAvg(**kw, beta=c.strategy.trim_beta),
    "krum": lambda c, kw: Krum(
        **kw, num_malicious_nodes=c.strategy.num_malicious_nodes
    ),
    "multikrum": _multikrum,
    "bulyan": lambda c, kw: Bulyan(
        **kw, num_malicious_nodes=c.strategy.num_malicious_nodes
    ),
    # q-FFL (Li et al. 2020): Flower estimates the Lipschitz constant as
    # 1 / client learning rate and weighs each update by the loss of the global
    # model on the node's training data, which the ClientApp replies under
    # ``global-model-loss`` when the strategy is qfedavg.
    "qfedavg": lambda c, kw: QFedAvg(
        **kw,
        client_learning_rate=effective_learning_rate(c),
        q=c.strategy.qffl_q,
        train_loss_key=keys.GLOBAL_MODEL_LOSS,
    ),
}

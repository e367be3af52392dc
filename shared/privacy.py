"""Privacy arithmetic for DP-SGD, as thin wrappers over Opacus's accountants.

fedge never computes ε itself: :func:`epsilon_for` hands a history of
``(noise_multiplier, sample_rate, steps)`` entries to Opacus's RDP or PRV
accountant, and :func:`calibrate_noise_multiplier` calls Opacus's own binary
search. This module only validates inputs (one clear :class:`ConfigError` per
problem), picks a default δ, and fixes the sampling plan every other module
shares (:func:`plan_sampling`), so the ledger, the budget check, the CLI and the
training loop all count steps the same way.

RDP accounting is made cheap without changing a digit of its result: Opacus's
``RDPAccountant`` sums ``compute_rdp(q, σ, steps)``, which is the one-step RDP
curve of ``(σ, q)`` times ``steps``. :func:`rdp_curve` computes that curve once
per ``(σ, q)`` and process (a ledger holds one or two such pairs), so an ε costs
one scaled sum and Opacus's own RDP → (ε, δ) conversion: microseconds, not the
~85 ms of rebuilding every curve.

Opacus is imported inside the functions that need it (``import opacus`` costs
about a second, which a Flower ClientApp would otherwise pay on every message).
Pure functions only: no state beyond memoised results, no files (the ledger in
``client/`` keeps state).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from fedge.shared.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

ACCOUNTANTS = ("rdp", "prv")

# One accountant step: (noise_multiplier, sample_rate, steps), Opacus's layout.
HistoryEntry = tuple[float, float, int]


def plan_sampling(*, num_examples: int, batch_size: int) -> tuple[float, int]:
    """Poisson sampling rate and steps per epoch for a local dataset.

    ``sample_rate = batch_size / num_examples`` (capped at 1: a batch larger than
    the data means every example is in every batch), so a Poisson batch holds
    ``batch_size`` examples on average; ``steps_per_epoch = round(1 /
    sample_rate)`` (at least 1), so one epoch sees each example once in
    expectation. A whole run is ``steps_per_epoch * epochs * rounds`` steps.

    Parameters
    ----------
    num_examples : int
        Training examples on this node (n).
    batch_size : int
        Expected Poisson batch size.

    Returns
    -------
    sample_rate : float
    steps_per_epoch : int

    Raises
    ------
    ConfigError
        If either count is below 1.
    """
    if num_examples < 1:
        raise ConfigError(f"num_examples must be >= 1, got {num_examples}.")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
    sample_rate = min(1.0, batch_size / num_examples)
    return sample_rate, max(1, round(1 / sample_rate))


def default_delta(num_examples: int) -> float:
    """Return the δ fedge uses when none is configured: a power of ten ≤ 1/(10·n).

    δ bounds the probability that the guarantee fails outright; a mechanism
    that publishes one random record whole is (0, 1/n)-DP, so δ must sit well
    below 1/n. One order of magnitude below, rounded down to a power of ten so
    it reads cleanly in reports: n = 150 → 1e-4, n = 1797 → 1e-5, n = 60000 →
    1e-6.

    Parameters
    ----------
    num_examples : int
        Training examples on this node (n >= 1).

    Raises
    ------
    ConfigError
        If ``num_examples`` < 1.
    """
    if num_examples < 1:
        raise ConfigError(f"num_examples must be >= 1 to choose δ, got {num_examples}.")
    # Smallest k with 10**k >= 10·n, in integers so 10·n = 1000 gives exactly 1e-3.
    exponent = len(str(10 * num_examples - 1))
    return 10.0**-exponent


def resolve_delta(target_delta: float, num_examples: int) -> float:
    """``target_delta`` checked against n, or :func:`default_delta` when it is 0.

    Raises
    ------
    ConfigError
        If δ is outside (0, 1) or not below 1/n.
    """
    if target_delta == 0:
        return default_delta(num_examples)
    check_delta(target_delta, num_examples=num_examples)
    return target_delta


def check_delta(delta: float, *, num_examples: int | None = None) -> None:
    """Raise :class:`ConfigError` unless 0 < δ < 1 (and δ < 1/n when n is known)."""
    if not 0 < delta < 1:
        raise ConfigError(f"δ must be in (0, 1), got {delta}.")
    if num_examples is not None and delta >= 1 / num_examples:
        raise ConfigError(
            f"δ = {delta:g} is not below 1/n = {1 / num_examples:.2g} for "
            f"{num_examples} examples; such a δ allows leaking a whole record. "
            f"Set target-delta = 0 to use {default_delta(num_examples):g}, "
            "or a value below 1/n."
        )


def epsilon_for(
    *, history: Iterable[HistoryEntry], delta: float, accountant: str = "rdp"
) -> float:
    """ε spent by a sequence of DP-SGD steps, from Opacus's accountant.

    Parameters
    ----------
    history : iterable of (noise_multiplier, sample_rate, steps)
        Every step taken, in order; entries with 0 steps are ignored.
    delta : float
        Target δ, in (0, 1).
    accountant : {"rdp", "prv"}
        Opacus's RDP accountant (Mironov et al., 2019) or PRV accountant
        (Gopi et al., 2021; tighter, slower).

    Returns
    -------
    float
        0 for an empty history; ``inf`` if any step had no noise.

    Raises
    ------
    ConfigError
        On an unknown accountant or an invalid entry or δ.
    """
    _check_accountant(accountant)
    check_delta(delta)
    entries = _canonical_history(history)
    if not entries:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in entries):
        return math.inf  # a noiseless step releases a gradient exactly
    if accountant == "rdp":
        return _rdp_epsilon(entries, delta)
    from opacus.accountants import PRVAccountant

    acct = PRVAccountant()
    acct.history = entries
    return float(acct.get_epsilon(delta=delta))


def epsilon_schedule(
    *, entry: HistoryEntry, rounds: int, delta: float, accountant: str = "rdp"
) -> tuple[float, ...]:
    """ε after ``k`` rounds of the same entry, for ``k = 0 .. rounds``.

    What a node's budget check needs for a whole run, computed once: the
    schedule travels in the node's ``context.state``, so a later message
    (a fresh process in deployment) checks its budget without the accountant.
    Element ``k`` equals :func:`epsilon_for` of ``[entry] * k``.

    Parameters
    ----------
    entry : (noise_multiplier, sample_rate, steps)
        One round of the node's plan.
    rounds : int
        Planned rounds (>= 0).
    delta : float
    accountant : {"rdp", "prv"}
        Only ``"rdp"`` is cheap (see the module docstring); a PRV schedule costs
        ``rounds`` full PRV evaluations.
    """
    entry = check_history_entry(entry, where="planned round")
    return tuple(
        epsilon_for(history=[entry] * k, delta=delta, accountant=accountant)
        for k in range(rounds + 1)
    )


@functools.lru_cache(maxsize=1024)
def rdp_curve(*, noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """RDP of one Sampled Gaussian step at Opacus's default orders (read-only).

    ``compute_rdp(q, σ, steps, orders)`` of Opacus is this curve times ``steps``,
    so ``rdp_curve(...) * steps`` is bit-for-bit what ``RDPAccountant`` sums.
    """
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp

    curve: np.ndarray = compute_rdp(
        q=sample_rate,
        noise_multiplier=noise_multiplier,
        steps=1,
        orders=RDPAccountant.DEFAULT_ALPHAS,
    )
    curve.flags.writeable = False
    return curve


def _rdp_epsilon(entries: list[HistoryEntry], delta: float) -> float:
    """``RDPAccountant(history=entries).get_epsilon(delta)``, from cached curves."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import get_privacy_spent

    rdp = sum(
        rdp_curve(noise_multiplier=sigma, sample_rate=rate) * steps
        for sigma, rate, steps in entries
    )
    epsilon, _ = get_privacy_spent(
        orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta
    )
    return float(epsilon)


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    target_delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
) -> float:
    """Return the noise multiplier that spends at most ``target_epsilon`` in ``steps``.

    Opacus's ``get_noise_multiplier`` binary search (ε tolerance 0.01, from
    below: the returned σ never overshoots the target).

    Raises
    ------
    ConfigError
        On an invalid target, rate or step count, or when no σ up to Opacus's
        limit (1e6) reaches the target.
    """
    _check_accountant(accountant)
    if not target_epsilon > 0:
        raise ConfigError(f"target ε must be > 0, got {target_epsilon}.")
    check_delta(target_delta)
    _check_sample_rate(sample_rate)
    _check_steps(steps)
    return _calibrate(target_epsilon, target_delta, sample_rate, int(steps), accountant)


@functools.lru_cache(maxsize=256)
def _calibrate(
    target_epsilon: float,
    target_delta: float,
    sample_rate: float,
    steps: int,
    accountant: str,
) -> float:
    """Opacus's search, once per process for each input (it costs ~1 s).

    Virtual nodes of one simulation share processes and mostly the same plan.
    """
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():
            # The search probes huge σ, whose best RDP order is the largest one.
            warnings.filterwarnings("ignore", message="Optimal order is the largest")
            sigma = get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=target_delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
            )
    except ValueError as e:
        raise ConfigError(
            f"No noise multiplier reaches ε = {target_epsilon} at δ = "
            f"{target_delta:g} for {steps} steps at sample rate {sample_rate:g} "
            f"({e}); raise target-epsilon or train fewer steps."
        ) from e
    return float(sigma)


def _canonical_history(history: Iterable[HistoryEntry]) -> list[HistoryEntry]:
    """Return validated entries, consecutive equal (σ, q) merged, as Opacus's step() does.

    Merging makes R rounds of one plan the same single entry that
    :func:`calibrate_noise_multiplier` was given, so the PRV accountant's
    discretisation (which depends on the split) sees identical input.
    """
    merged: list[HistoryEntry] = []
    for i, entry in enumerate(history):
        sigma, rate, steps = check_history_entry(entry, where=f"history entry {i}")
        if steps == 0:
            continue
        if merged and merged[-1][0] == sigma and merged[-1][1] == rate:
            merged[-1] = (sigma, rate, merged[-1][2] + steps)
        else:
            merged.append((sigma, rate, steps))
    return merged


def check_history_entry(entry: Sequence[float], *, where: str) -> HistoryEntry:
    """Validate one ``(noise_multiplier, sample_rate, steps)`` entry.

    Parameters
    ----------
    entry : sequence of 3 numbers
    where : str
        Names the entry in the error message, e.g. ``"round 3"``.

    Returns
    -------
    (float, float, int)

    Raises
    ------
    ConfigError
        If σ is negative or infinite, the rate is outside (0, 1] or steps is
        not an integer >= 0.
    """
    if len(entry) != 3:
        raise ConfigError(
            f"{where} must be (noise_multiplier, sample_rate, steps), got {entry!r}."
        )
    sigma, rate, steps = entry
    if not sigma >= 0 or math.isinf(sigma):
        raise ConfigError(
            f"{where}: noise_multiplier must be finite and >= 0, got {sigma}."
        )
    if not 0 < rate <= 1:
        raise ConfigError(f"{where}: sample_rate must be in (0, 1], got {rate}.")
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise ConfigError(f"{where}: steps must be an integer >= 0, got {steps!r}.")
    return float(sigma), float(rate), int(steps)


def _check_sample_rate(sample_rate: float) -> None:
    if not 0 < sample_rate <= 1:
        raise ConfigError(f"sample_rate must be in (0, 1], got {sample_rate}.")


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}.")


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise ConfigError(
            f"accountant must be one of {list(ACCOUNTANTS)}, got {accountant!r}."
        )

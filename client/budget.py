"""Budget enforcement: a node refuses a round that would take ε past its budget.

The check runs before training, on what ε *would be* after the planned round,
so a node never spends past its budget even by one round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedge.shared.errors import ConfigError
from fedge.shared.privacy import HistoryEntry, check_history_entry, epsilon_for
from fedge.shared.privacy_history import ReleaseHistory


@dataclass(frozen=True)
class BudgetDecision:
    """Whether the planned round fits the budget, and why.

    Attributes
    ----------
    allowed : bool
        ``epsilon_after <= budget_epsilon``.
    epsilon_now : float
        ε spent by the releases already in the node's history.
    epsilon_after : float
        ε if the planned round is trained too.
    budget_epsilon : float
    reason : str
        One line for logs and the reply to the server.
    """

    allowed: bool
    epsilon_now: float
    epsilon_after: float
    budget_epsilon: float
    reason: str


def check_budget(
    *,
    history: ReleaseHistory,
    planned: HistoryEntry,
    delta: float,
    budget_epsilon: float,
    accountant: str = "rdp",
    schedule: Sequence[float] = (),
) -> BudgetDecision:
    """Decide whether the node may train the planned round.

    Parameters
    ----------
    history : ReleaseHistory
        What the node has spent in this run.
    planned : (noise_multiplier, sample_rate, steps)
        The round about to be trained.
    delta : float
        δ the budget is stated at.
    budget_epsilon : float
        The node's ε budget for the whole run (> 0).
    accountant : {"rdp", "prv"}
    schedule : sequence of float, optional
        ε after ``k`` rounds of ``planned`` for ``k = 0, 1, ...``
        (:func:`fedge.shared.privacy.epsilon_schedule`, same δ and accountant), or
        its first elements. When the history holds nothing but ``planned``
        rounds, each ε the schedule holds is read from it (a fresh process then
        needs no accountant); what it lacks, and any other history, is
        accounted afresh.

    Returns
    -------
    BudgetDecision

    Raises
    ------
    ConfigError
        On an invalid budget, δ, accountant or planned entry.
    """
    if not budget_epsilon > 0:
        raise ConfigError(f"budget ε must be > 0, got {budget_epsilon}.")
    planned = check_history_entry(planned, where="planned round")
    spent = history.opacus_history
    k = len(spent)
    known = schedule if all(e == planned for e in spent) else ()
    epsilon_now = (
        known[k]
        if k < len(known)
        else epsilon_for(history=spent, delta=delta, accountant=accountant)
    )
    epsilon_after = (
        known[k + 1]
        if k + 1 < len(known)
        else epsilon_for(history=[*spent, planned], delta=delta, accountant=accountant)
    )
    allowed = epsilon_after <= budget_epsilon
    verdict = "within" if allowed else "over"
    reason = (
        f"ε would go from {epsilon_now:.3f} to {epsilon_after:.3f} at δ = {delta:g} "
        f"({accountant}), {verdict} the budget ε = {budget_epsilon:g}"
        + ("." if allowed else "; refusing to train this round.")
    )
    return BudgetDecision(
        allowed=allowed,
        epsilon_now=epsilon_now,
        epsilon_after=epsilon_after,
        budget_epsilon=budget_epsilon,
        reason=reason,
    )

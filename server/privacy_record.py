"""The coordinator's own privacy ledger: every DP-SGD release each node reported.

A node's ledger lives on the node; a wiped ``state-dir`` would restart its ε at
zero and an edited one could lower it. So the coordinator keeps a second
record: node -> :class:`~fedge.shared.privacy_history.ReleaseHistory` (the
type the node's ledger keeps) of every release it received in the run. One
call per training reply (:meth:`PrivacyRecord.admit`) records the release,
computes the node's ε from the record with Opacus's accountant, and says why
the update must be dropped when the report contradicts the record or the
node's plan (:func:`release_problem`). Each node is sent its record with the
round's message (the node takes, round by round, the larger of its own ledger
and this record). The ε in ``metrics.csv``, ``model.json`` and the ONNX
metadata is this record's.

A release is recorded as at least its plan spends
(:func:`fedge.shared.privacy_history.spend_at_least`),
so a node cannot lower the coordinator's ε by what it reports: a dropped reply
still counts, and a reported σ above the plan, a q below it, fewer steps than
planned or no valid figures at all are not believed.

Kept in the run folder (``privacy-record.json``) and in every checkpoint, so a
resumed coordinator continues it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedge.shared import keys
from fedge.shared.privacy import HistoryEntry
from fedge.shared.privacy_history import (
    WIRE_COLUMNS,
    Release,
    ReleaseHistory,
    spend_at_least,
)
from fedge.shared.privacy_plan import PrivacyPlan

# Relative slack for comparing the node's floats with the coordinator's.
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Admission:
    """What the coordinator made of one DP training reply (:meth:`PrivacyRecord.admit`).

    Attributes
    ----------
    epsilon : float or None
        The node's ε by the coordinator's record, this reply's release included;
        None when the record knows nothing of the node.
    problem : str or None
        Why the reply contradicts the record or the node's plan (its update is
        dropped), or None.
    """

    epsilon: float | None
    problem: str | None


@dataclass
class PrivacyRecord:
    """Per node: δ and every release received in this run.

    Attributes
    ----------
    histories : dict of int to ReleaseHistory
        Flower node id -> its releases in the order they were received.
    deltas : dict of int to float
        Flower node id -> the δ the node states its ε at.
    """

    histories: dict[int, ReleaseHistory] = field(default_factory=dict)
    deltas: dict[int, float] = field(default_factory=dict)

    def history(self, node_id: int) -> ReleaseHistory:
        """Return the node's recorded releases (empty if none)."""
        return self.histories.get(node_id, ReleaseHistory())

    def epsilon(self, node_id: int, *, accountant: str) -> float | None:
        """ε of the node's record by Opacus's ``accountant``; None if none is kept."""
        if node_id not in self.deltas:
            return None
        return self.history(node_id).epsilon(
            delta=self.deltas[node_id], accountant=accountant
        )

    def admit(
        self,
        node_id: int,
        server_round: int,
        metrics: Mapping[str, Any],
        *,
        plan_for: Callable[[int], PrivacyPlan],
        accountant: str,
    ) -> Admission:
        """Record a DP training reply's release and return its ε and any problem.

        The one call per training reply (not a refusal): the release is
        recorded whether the reply is kept or dropped (the coordinator received
        its update), at no less than the node's plan spends
        (:func:`fedge.shared.privacy_history.spend_at_least`); the node's ε is then computed once, from the
        whole record, and the report is checked against the record and the plan
        (:func:`release_problem`).

        Parameters
        ----------
        node_id : int
            The replying node (Flower's node id).
        server_round : int
        metrics : mapping
            The reply's scalar metrics (``keys.NUM_EXAMPLES``, ``keys.EPSILON``,
            ...).
        plan_for : callable
            The run's plan for a node of ``num-examples`` examples
            (:func:`fedge.shared.privacy_plan.plan_for_config`).
        accountant : {"rdp", "prv"}
            The run's Opacus accountant (the plan's).

        Returns
        -------
        Admission
            The node's ε by this record (None when no plan can be made for the
            examples it reports and the record does not know it yet: then
            nothing is recorded), and why its update must be dropped, if it must.
        """
        try:
            plan = plan_for(int(metrics.get(keys.NUM_EXAMPLES, 0)))
        except (ValueError, OverflowError) as e:  # ConfigError, or n is NaN/inf
            return Admission(
                epsilon=self.epsilon(node_id, accountant=accountant),
                problem=f"its privacy plan cannot be checked ({e})",
            )
        release = reported_release(metrics)
        steps_before = self.history(node_id).total_steps
        counted = spend_at_least(release, plan.round_entry)
        self.add(node_id, server_round, counted, plan.delta)
        epsilon = self.history(node_id).epsilon(
            delta=plan.delta, accountant=plan.accountant
        )
        problem = release_problem(
            release,
            metrics,
            plan=plan,
            steps_recorded=steps_before,
            epsilon_recorded=epsilon,
        )
        return Admission(epsilon=epsilon, problem=problem)

    def add(
        self, node_id: int, server_round: int, entry: HistoryEntry, delta: float
    ) -> None:
        """Record one release of ``node_id`` in ``server_round``."""
        release = Release.checked(server_round, entry, where=f"node {node_id}")
        self.histories[node_id] = self.history(node_id).plus(release)
        self.deltas[node_id] = delta

    def to_message_config(self, node_id: int) -> dict[str, list[int] | list[float]]:
        """Return the node's record as ConfigRecord entries (empty if none)."""
        history = self.history(node_id)
        return history.to_columns(WIRE_COLUMNS) if history.releases else {}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (node ids as strings, one row a release)."""
        return {
            "releases": {str(k): v.to_rows() for k, v in self.histories.items()},
            "deltas": {str(k): v for k, v in self.deltas.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyRecord:
        """Rebuild from :meth:`to_dict`.

        Raises
        ------
        ConfigError
            If a release is invalid.
        """
        return cls(
            histories={
                int(k): ReleaseHistory.from_rows(v, where=f"privacy record of node {k}")
                for k, v in data.get("releases", {}).items()
            },
            deltas={int(k): float(v) for k, v in data.get("deltas", {}).items()},
        )


def reported_release(metrics: Mapping[str, Any]) -> HistoryEntry | None:
    """Return the ``(σ, q, steps)`` a training reply says it released, or None.

    None when a figure is missing or not a finite number (steps: not a whole
    number): such a release cannot be checked, only counted at its plan
    (:func:`fedge.shared.privacy_history.spend_at_least`).
    """
    try:
        sigma = float(metrics[keys.NOISE_MULTIPLIER])
        rate = float(metrics[keys.SAMPLE_RATE])
        steps = float(metrics[keys.DP_ROUND_STEPS])
    except (KeyError, TypeError, ValueError):
        return None
    if not (math.isfinite(sigma) and math.isfinite(rate) and steps.is_integer()):
        return None
    return (sigma, rate, int(steps))


def release_problem(
    release: HistoryEntry | None,
    metrics: Mapping[str, Any],
    *,
    plan: PrivacyPlan,
    steps_recorded: int,
    epsilon_recorded: float,
) -> str | None:
    """Return why a DP training reply contradicts the record or the plan, else None.

    A reply contradicts when it reports a noise multiplier below the plan's, a
    sample rate other than the plan's (the run's batch size ÷ the examples the
    node reports, :func:`fedge.shared.privacy_plan.plan_privacy`), fewer steps in this
    round than planned, fewer steps in the run than the record holds plus this
    round, or an ε below the record's with this round counted at no less than
    its plan (:func:`fedge.shared.privacy_history.spend_at_least`).

    Parameters
    ----------
    release : (noise_multiplier, sample_rate, steps) or None
        As the reply reports it (:func:`reported_release`).
    metrics : mapping
        The reply's metrics (``keys.EPSILON``, ``keys.DP_STEPS``, ...).
    plan : PrivacyPlan
        The node's plan (:func:`fedge.shared.privacy_plan.plan_for_config` of its
        ``num-examples``).
    steps_recorded : int
        DP-SGD steps the coordinator's record held for the node before this reply.
    epsilon_recorded : float
        The node's ε by the coordinator's record, this reply's counted release
        included.
    """
    if release is None:
        return (
            f"reports no valid {keys.NOISE_MULTIPLIER!r}, {keys.SAMPLE_RATE!r} and "
            f"{keys.DP_ROUND_STEPS!r}: its DP-SGD release cannot be checked"
        )
    sigma, rate, steps = release
    if sigma < plan.noise_multiplier * (1 - _TOLERANCE):
        return (
            f"reports noise multiplier {sigma:.6g}, below the planned "
            f"{plan.noise_multiplier:.6g}"
        )
    if not math.isclose(rate, plan.sample_rate, rel_tol=_TOLERANCE):
        return (
            f"reports sample rate {rate:.6g}, the plan has {plan.sample_rate:.6g} "
            f"(batch size ÷ its {metrics.get(keys.NUM_EXAMPLES, '?')} examples)"
        )
    if steps < plan.steps_per_round:
        return f"reports {steps} DP-SGD steps this round, the plan has {plan.steps_per_round}"
    recorded = steps_recorded + steps
    total = float(metrics.get(keys.DP_STEPS, 0))
    if not total >= recorded:  # also NaN
        return (
            f"reports {total:.15g} DP-SGD steps in the run, the coordinator's record "
            f"holds {recorded}"
        )
    epsilon = float(metrics.get(keys.EPSILON, 0.0))
    if not epsilon >= epsilon_recorded * (1 - 1e-6):  # also NaN
        return (
            f"reports ε = {epsilon:.6g}, below the coordinator's record "
            f"{epsilon_recorded:.6g}"
        )
    return None

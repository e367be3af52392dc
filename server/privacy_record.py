"""The coordinator's own privacy ledger: every DP-SGD release each node reported.

A node's ledger lives on the node; a wiped ``state-dir`` would restart its ε at
zero and an edited one could lower it. So the coordinator keeps a second
record, per node, of every ``(noise_multiplier, sample_rate, steps)`` it
received in the run, computes each node's ε from it with Opacus's accountant
(:func:`fedge.shared.privacy.epsilon_for`), sends each node its record with the
round's message (the node takes, round by round, the larger of its own ledger
and this record), and drops an update whose report contradicts the record or
the node's plan (:func:`check_privacy_report`). The ε in ``metrics.csv``,
``model.json`` and the ONNX metadata is this record's.

A release is recorded as at least its plan spends (:func:`counted_release`),
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
from fedge.shared.privacy import HistoryEntry, check_history_entry, epsilon_for
from fedge.shared.privacy_plan import PrivacyPlan

# Relative slack for comparing the node's floats with the coordinator's.
_TOLERANCE = 1e-9

# One recorded release: (server_round, noise_multiplier, sample_rate, steps).
Release = tuple[int, float, float, int]


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
    """Per node: δ and every release reported in this run.

    Attributes
    ----------
    releases : dict of int to list of Release
        Flower node id -> releases in the order they were received.
    deltas : dict of int to float
        Flower node id -> the δ the node states its ε at.
    """

    releases: dict[int, list[Release]] = field(default_factory=dict)
    deltas: dict[int, float] = field(default_factory=dict)

    def history(self, node_id: int) -> list[HistoryEntry]:
        """Return the node's recorded releases as an Opacus accountant history."""
        return [(s, q, n) for _, s, q, n in self.releases.get(node_id, [])]

    def total_steps(self, node_id: int) -> int:
        """DP-SGD steps recorded for the node."""
        return sum(n for *_, n in self.releases.get(node_id, []))

    def epsilon(self, node_id: int, *, accountant: str) -> float | None:
        """ε of the node's record by Opacus's ``accountant``; None if none is kept."""
        if node_id not in self.deltas:
            return None
        return epsilon_for(
            history=self.history(node_id),
            delta=self.deltas[node_id],
            accountant=accountant,
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
        (:func:`counted_release`); the node's ε is then computed once, from the
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
        steps_before = self.total_steps(node_id)
        self.add(node_id, server_round, counted_release(release, plan=plan), plan.delta)
        epsilon = epsilon_for(
            history=self.history(node_id), delta=plan.delta, accountant=plan.accountant
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
        sigma, rate, steps = check_history_entry(entry, where=f"node {node_id}")
        self.releases.setdefault(node_id, []).append((server_round, sigma, rate, steps))
        self.deltas[node_id] = delta

    def to_message_config(self, node_id: int) -> dict[str, list[int] | list[float]]:
        """Return the node's record as ConfigRecord entries (empty if none)."""
        releases = self.releases.get(node_id, [])
        if not releases:
            return {}
        return {
            keys.RECORD_ROUNDS: [r for r, *_ in releases],
            keys.RECORD_NOISE_MULTIPLIERS: [s for _, s, _, _ in releases],
            keys.RECORD_SAMPLE_RATES: [q for _, _, q, _ in releases],
            keys.RECORD_STEPS: [n for *_, n in releases],
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (node ids as strings)."""
        return {
            "releases": {
                str(k): [list(r) for r in v] for k, v in self.releases.items()
            },
            "deltas": {str(k): v for k, v in self.deltas.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyRecord:
        """Rebuild from :meth:`to_dict`."""
        return cls(
            releases={
                int(k): [(int(r), float(s), float(q), int(n)) for r, s, q, n in v]
                for k, v in data.get("releases", {}).items()
            },
            deltas={int(k): float(v) for k, v in data.get("deltas", {}).items()},
        )


def reported_release(metrics: Mapping[str, Any]) -> HistoryEntry | None:
    """Return the ``(σ, q, steps)`` a training reply says it released, or None.

    None when a figure is missing or not a finite number (steps: not a whole
    number): such a release cannot be checked, only counted at its plan
    (:func:`counted_release`).
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


def counted_release(release: HistoryEntry | None, *, plan: PrivacyPlan) -> HistoryEntry:
    """Return what the coordinator records for a training reply's release.

    Each figure is taken from the report only where it is valid and spends
    more than the node's plan: the smaller σ, the larger q, the more steps. An
    honest node reports its plan exactly, so this is what it released; a node
    that reports less, or no valid release at all, is counted at its plan,
    whether its reply is kept or dropped: the coordinator received its update.

    Parameters
    ----------
    release : (noise_multiplier, sample_rate, steps) or None
        As the reply reports it (:func:`reported_release`).
    plan : PrivacyPlan
        The node's plan for the examples it reports.
    """
    if release is None:
        return plan.round_entry
    sigma, rate, steps = release
    return (
        sigma if 0 <= sigma < plan.noise_multiplier else plan.noise_multiplier,
        rate if plan.sample_rate < rate <= 1 else plan.sample_rate,
        max(steps, plan.steps_per_round),
    )


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
    round, or an ε below the record's with this round as
    :func:`counted_release` counts it.

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


def check_privacy_report(
    record: PrivacyRecord,
    node_id: int,
    metrics: Mapping[str, Any],
    *,
    plan: PrivacyPlan,
) -> str | None:
    """Return why a reply contradicts ``record`` or ``plan``, without recording it.

    Superseded by :meth:`PrivacyRecord.admit` (records the release and computes
    its ε once); kept until the round loop calls that.
    """
    release = reported_release(metrics)
    counted = counted_release(release, plan=plan)
    return release_problem(
        release,
        metrics,
        plan=plan,
        steps_recorded=record.total_steps(node_id),
        epsilon_recorded=epsilon_for(
            history=[*record.history(node_id), counted],
            delta=plan.delta,
            accountant=plan.accountant,
        ),
    )

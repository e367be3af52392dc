"""A node's DP-SGD releases in one run: the one history both ledgers keep.

A node keeps its own ledger (:mod:`fedge.client.privacy_ledger`) and the
coordinator keeps a record of every node (:mod:`fedge.server.privacy_record`);
both are a :class:`ReleaseHistory` of :class:`Release` s, as every Opacus
accountant is one ``history`` of ``(noise_multiplier, sample_rate, steps)``.
fedge adds the server round each release answered, so two copies can be
compared round by round (:meth:`ReleaseHistory.adopt_larger`). ε is never
stored: :meth:`ReleaseHistory.epsilon` hands the history to Opacus's accountant
(:func:`fedge.shared.privacy.epsilon_for`).

A history is append-only (:meth:`ReleaseHistory.plus` returns a longer one;
nothing replaces or removes a release): every release may have been seen, so
dropping one would undercount ε. For the same reason what is recorded is never
less than what was planned (:func:`spend_at_least`).

One encoder for every place a history is written: four parallel lists
(:meth:`ReleaseHistory.to_columns`) under the ledger's names in the node's file
and ``context.state`` (:data:`LEDGER_COLUMNS`) and under the wire names of
:mod:`fedge.shared.keys` in the coordinator's message (:data:`WIRE_COLUMNS`),
or one ``[round, σ, q, steps]`` row per release in the coordinator's
``privacy-record.json`` and checkpoints (:meth:`ReleaseHistory.to_rows`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedge.shared import keys
from fedge.shared.errors import ConfigError
from fedge.shared.privacy import HistoryEntry, check_history_entry, epsilon_for


@dataclass(frozen=True)
class Release:
    """DP-SGD steps one node released with one update."""

    server_round: int
    noise_multiplier: float
    sample_rate: float
    steps: int

    @classmethod
    def checked(
        cls, server_round: Any, entry: Sequence[float], *, where: str
    ) -> Release:
        """Return a validated release of ``entry`` in ``server_round``.

        Raises
        ------
        ConfigError
            If ``server_round`` is not an int or ``entry`` is not a valid
            ``(noise_multiplier, sample_rate, steps)``
            (:func:`fedge.shared.privacy.check_history_entry`).
        """
        if isinstance(server_round, bool) or not isinstance(server_round, int):
            raise ConfigError(
                f"{where}: server_round must be an int, got {server_round!r}."
            )
        sigma, rate, steps = check_history_entry(entry, where=where)
        return cls(server_round, sigma, rate, steps)

    @property
    def entry(self) -> HistoryEntry:
        """Return the release as one Opacus accountant history entry."""
        return (self.noise_multiplier, self.sample_rate, self.steps)


@dataclass(frozen=True)
class HistoryColumns:
    """The names a history's four parallel lists are written under."""

    server_rounds: str
    noise_multipliers: str
    sample_rates: str
    steps: str


# The node's ledger file and its copy in context.state.
LEDGER_COLUMNS = HistoryColumns(
    "server-rounds", "noise-multipliers", "sample-rates", "steps"
)
# The coordinator's record of a node, sent with every round's message.
WIRE_COLUMNS = HistoryColumns(
    keys.RECORD_ROUNDS,
    keys.RECORD_NOISE_MULTIPLIERS,
    keys.RECORD_SAMPLE_RATES,
    keys.RECORD_STEPS,
)


@dataclass(frozen=True)
class ReleaseHistory:
    """Every release of one node in one run, in the order they were recorded."""

    releases: tuple[Release, ...] = ()

    def __len__(self) -> int:
        """Return the number of releases."""
        return len(self.releases)

    def plus(self, release: Release) -> ReleaseHistory:
        """Return this history with ``release`` appended (a round may repeat)."""
        return ReleaseHistory((*self.releases, release))

    @property
    def opacus_history(self) -> list[HistoryEntry]:
        """Opacus's accountant history: ``[(noise_multiplier, sample_rate, steps)]``."""
        return [release.entry for release in self.releases]

    @property
    def server_rounds(self) -> list[int]:
        """The server round of each release, in order."""
        return [release.server_round for release in self.releases]

    @property
    def total_steps(self) -> int:
        """DP-SGD steps over all releases."""
        return sum(release.steps for release in self.releases)

    def has_round(self, server_round: int) -> bool:
        """Whether a release of ``server_round`` is recorded."""
        return server_round in self.server_rounds

    def epsilon(self, *, delta: float, accountant: str = "rdp") -> float:
        """ε of every release at ``delta``, from Opacus's ``accountant``."""
        return epsilon_for(
            history=self.opacus_history, delta=delta, accountant=accountant
        )

    def adopt_larger(self, other: ReleaseHistory) -> ReleaseHistory:
        """Return, round by round, the releases of whichever copy holds more of them.

        ``self`` wins a tie. Used by a node whose own ledger may have been
        wiped or edited, with the coordinator's record of it as ``other``: ε
        never drops below what the coordinator saw released, and a release the
        coordinator missed (a lost reply) still counts.
        """
        if not other.releases:
            return self
        mine, theirs = _by_round(self.releases), _by_round(other.releases)
        merged: list[Release] = []
        for server_round in sorted(mine.keys() | theirs.keys()):
            own, recorded = mine.get(server_round, []), theirs.get(server_round, [])
            merged.extend(own if len(own) >= len(recorded) else recorded)
        return ReleaseHistory(tuple(merged))

    # ------------------------------------------------------------ encoding
    def to_columns(self, names: HistoryColumns) -> dict[str, list[int] | list[float]]:
        """Return the history as four parallel lists under ``names``."""
        return {
            names.server_rounds: self.server_rounds,
            names.noise_multipliers: [r.noise_multiplier for r in self.releases],
            names.sample_rates: [r.sample_rate for r in self.releases],
            names.steps: [r.steps for r in self.releases],
        }

    @classmethod
    def from_columns(
        cls, data: Mapping[str, Any], names: HistoryColumns, *, where: str
    ) -> ReleaseHistory:
        """Rebuild from :meth:`to_columns`, validating every release.

        Raises
        ------
        KeyError
            If a column is missing.
        ValueError
            If the columns differ in length, or (as :class:`ConfigError`) a
            release is invalid.
        TypeError
            If a column is not a list.
        """
        columns = (
            names.server_rounds,
            names.noise_multipliers,
            names.sample_rates,
            names.steps,
        )
        rows = zip(*(_column(data, name) for name in columns), strict=True)
        return cls.from_rows(rows, where=where)

    def to_rows(self) -> list[list[float]]:
        """Return one ``[server_round, noise_multiplier, sample_rate, steps]`` a release."""
        return [[r.server_round, *r.entry] for r in self.releases]

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence[Any]], *, where: str) -> ReleaseHistory:
        """Rebuild from :meth:`to_rows`, validating every release.

        Raises
        ------
        ConfigError
            If a release is invalid (``where`` names the history).
        ValueError
            If a row does not hold four values.
        """
        releases = []
        for i, (server_round, *entry) in enumerate(rows):
            releases.append(
                Release.checked(server_round, entry, where=f"{where}, release {i + 1}")
            )
        return cls(tuple(releases))


def spend_at_least(
    reported: HistoryEntry | None, planned: HistoryEntry
) -> HistoryEntry:
    """Return ``reported``, each figure raised to spend no less than ``planned``.

    The smaller noise multiplier, the larger sample rate (up to 1) and the more
    steps: a report is believed only where it spends more than the plan. None
    (nothing valid reported) is the plan.
    """
    if reported is None:
        return planned
    sigma, rate, steps = reported
    planned_sigma, planned_rate, planned_steps = planned
    return (
        sigma if 0 <= sigma < planned_sigma else planned_sigma,
        rate if planned_rate < rate <= 1 else planned_rate,
        max(steps, planned_steps),
    )


def _by_round(releases: Iterable[Release]) -> dict[int, list[Release]]:
    rounds: dict[int, list[Release]] = {}
    for release in releases:
        rounds.setdefault(release.server_round, []).append(release)
    return rounds


def _column(data: Mapping[str, Any], name: str) -> list[Any]:
    value = data[name]
    if not isinstance(value, list):
        raise TypeError(f"{name!r} holds {value!r}, expected a list")
    return value

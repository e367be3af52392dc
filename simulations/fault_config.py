"""Which simulated clients misbehave, and how: the ``fault-*`` keys, read and checked.

The scenario file, ``fedge simulate`` and the app copy read these before any
process starts; the misbehaving components themselves are in
:mod:`fedge.simulations.fault_injection`, which needs Flower and torch. Kept
apart so that reading a scenario does not import either (about 1 s of a
simulated run's start).

Who misbehaves is seeded, so a scenario replays exactly: attackers are the
first ``fault-attackers`` partition ids of a permutation drawn from
``fault-seed`` (:func:`choose_attackers`); a dropout is one uniform draw per
``(fault-seed, round, partition-id)`` (:func:`drops_out`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedge.shared.errors import ConfigError

FAULT_PREFIX = "fault-"
ATTACKS = ("none", "sign-flip", "scale", "nan", "wrong-shape")
# The fault keys with their defaults: what the copied app's pyproject declares.
FAULT_DEFAULTS: dict[str, Any] = {
    "fault-attack": "none",
    "fault-attackers": 0,
    "fault-scale": 10.0,
    "fault-dropout": 0.0,
    "fault-seed": 0,
    "fault-wipe-state": "",
}
# What a string-valued key looks like, for its type error.
_FORMS = {"fault-wipe-state": " PARTITION@ROUND[,...] such as '3@2'"}
# Separate the random streams of the two decisions drawn from one fault seed.
_ATTACKER_STREAM = 1
_DROPOUT_STREAM = 2


@dataclass(frozen=True)
class FaultConfig:
    """How simulated clients misbehave.

    Attributes
    ----------
    attack : str
        One of :data:`ATTACKS`.
    attackers : int
        How many partitions send corrupted updates.
    scale : float
        ``k`` of the ``sign-flip`` and ``scale`` attacks.
    dropout : float
        Probability in [0, 1) that a node fails in a given round.
    seed : int
        Seed of the attacker choice and the dropout draws.
    wipe_state : tuple of (int, int)
        ``(partition_id, server_round)`` pairs: that partition's state is wiped
        before it handles that round's training message.
    """

    attack: str = "none"
    attackers: int = 0
    scale: float = 10.0
    dropout: float = 0.0
    seed: int = 0
    wipe_state: tuple[tuple[int, int], ...] = ()

    @property
    def active(self) -> bool:
        """Whether any client misbehaves at all."""
        return (
            (self.attack != "none" and self.attackers > 0)
            or self.dropout > 0
            or bool(self.wipe_state)
        )

    def wipes(self, partition_id: int, server_round: int) -> bool:
        """Whether ``partition_id`` loses its state before ``server_round``'s training."""
        return (partition_id, server_round) in self.wipe_state

    def to_run_config(self) -> dict[str, Any]:
        """Return the ``fault-*`` run-config keys for this config."""
        return {
            "fault-attack": self.attack,
            "fault-attackers": self.attackers,
            "fault-scale": self.scale,
            "fault-dropout": self.dropout,
            "fault-seed": self.seed,
            "fault-wipe-state": ",".join(f"{p}@{r}" for p, r in self.wipe_state),
        }


def split_fault_keys(
    run_config: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a run config into (production keys, ``fault-*`` keys)."""
    faults = {k: v for k, v in run_config.items() if k.startswith(FAULT_PREFIX)}
    rest = {k: v for k, v in run_config.items() if not k.startswith(FAULT_PREFIX)}
    return rest, faults


def fault_config(
    values: Mapping[str, Any], *, num_clients: int | None = None
) -> FaultConfig:
    """Build and validate a :class:`FaultConfig` from ``fault-*`` keys.

    Parameters
    ----------
    values : mapping
        ``fault-*`` keys; missing ones take :data:`FAULT_DEFAULTS`.
    num_clients : int, optional
        When given, ``fault-attackers`` may not exceed it.

    Raises
    ------
    ConfigError
        Listing every unknown key, wrong type and out-of-range value at once.
    """
    merged = {**FAULT_DEFAULTS, **values}
    problems: list[str] = []
    unknown = sorted(set(merged) - set(FAULT_DEFAULTS))
    if unknown:
        problems.append(f"unknown fault keys {unknown}; known: {list(FAULT_DEFAULTS)}")
    kinds = {
        "fault-attack": str,
        "fault-attackers": int,
        "fault-seed": int,
        "fault-wipe-state": str,
    }
    for key, default in FAULT_DEFAULTS.items():
        value = merged[key]
        kind = kinds.get(key, float)
        ok = not isinstance(value, bool) and (
            isinstance(value, int | float) if kind is float else isinstance(value, kind)
        )
        if not ok:
            problems.append(
                f"'{key}' must be {kind.__name__}{_FORMS.get(key, '')}, got "
                f"{value!r} (default {default!r})"
            )
    if problems:
        raise ConfigError("Invalid fault config:\n  - " + "\n  - ".join(problems))
    attack, attackers = merged["fault-attack"], merged["fault-attackers"]
    scale, dropout = float(merged["fault-scale"]), float(merged["fault-dropout"])
    if attack not in ATTACKS:
        problems.append(
            f"'fault-attack' must be one of {list(ATTACKS)}, got {attack!r}"
        )
    if attackers < 0:
        problems.append(f"'fault-attackers' must be >= 0, got {attackers}")
    if num_clients is not None and attackers > num_clients:
        problems.append(
            f"'fault-attackers' = {attackers} exceeds the {num_clients} clients"
        )
    if scale <= 0:
        problems.append(f"'fault-scale' must be > 0, got {scale}")
    if not 0 <= dropout < 1:
        problems.append(f"'fault-dropout' must be in [0, 1), got {dropout}")
    if merged["fault-seed"] < 0:
        problems.append(f"'fault-seed' must be >= 0, got {merged['fault-seed']}")
    wipe_state, wipe_problems = parse_wipe_state(
        merged["fault-wipe-state"], num_clients=num_clients
    )
    problems.extend(wipe_problems)
    if problems:
        raise ConfigError("Invalid fault config:\n  - " + "\n  - ".join(problems))
    return FaultConfig(
        attack, attackers, scale, dropout, merged["fault-seed"], wipe_state
    )


def parse_wipe_state(
    text: str, *, num_clients: int | None = None
) -> tuple[tuple[tuple[int, int], ...], list[str]]:
    """Parse ``fault-wipe-state``: ``"P@R"`` pairs separated by commas ("" = none).

    Parameters
    ----------
    text : str
        E.g. ``"3@2"`` (partition 3 before round 2) or ``"0@2,5@3"``.
    num_clients : int, optional
        When given, every partition must be below it.

    Returns
    -------
    tuple
        The ``(partition_id, server_round)`` pairs, sorted, and the problems
        found (empty when the text is valid).
    """
    pairs: set[tuple[int, int]] = set()
    problems: list[str] = []
    for item in (part.strip() for part in text.split(",") if text.strip()):
        partition, at, server_round = item.partition("@")
        if not (at and partition.isdigit() and server_round.isdigit()):
            problems.append(
                f"'fault-wipe-state' item {item!r} must be PARTITION@ROUND "
                "(e.g. '3@2': partition 3 before round 2)"
            )
            continue
        pair = (int(partition), int(server_round))
        if pair[1] < 1:
            problems.append(
                f"'fault-wipe-state' item {item!r}: rounds start at 1, got {pair[1]}"
            )
        if num_clients is not None and pair[0] >= num_clients:
            problems.append(
                f"'fault-wipe-state' item {item!r}: partition {pair[0]} does not "
                f"exist with {num_clients} clients (0 to {num_clients - 1})"
            )
        pairs.add(pair)
    return tuple(sorted(pairs)), problems


# ------------------------------------------------------------ who misbehaves
def choose_attackers(num_partitions: int, count: int, *, seed: int) -> frozenset[int]:
    """Return the partition ids that attack: the first ``count`` of a seeded permutation.

    Raises
    ------
    ConfigError
        If ``count`` is negative or exceeds ``num_partitions``.
    """
    if not 0 <= count <= num_partitions:
        raise ConfigError(
            f"'fault-attackers' must be in [0, {num_partitions}] for "
            f"{num_partitions} partitions, got {count}"
        )
    order = np.random.default_rng([seed, _ATTACKER_STREAM]).permutation(num_partitions)
    return frozenset(int(i) for i in order[:count])


def drops_out(*, seed: int, server_round: int, partition_id: int, rate: float) -> bool:
    """Whether ``partition_id`` fails in ``server_round``: one seeded draw < ``rate``."""
    if rate <= 0:
        return False
    draw = np.random.default_rng(
        [seed, _DROPOUT_STREAM, server_round, partition_id]
    ).random()
    return bool(draw < rate)


# ---------------------------------------------------------------- the attacks

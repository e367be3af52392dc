"""Misbehaving virtual clients for simulation scenarios: attacks, dropouts, lost disks.

Fault injection is a scenario option and never part of the production path:
``fedge simulate`` submits a copy of the app whose components are this module's
:data:`app` (ClientApp) and :data:`server_app` (ServerApp). Both strip the
``fault-*`` keys from the run config and hand every message to the production
apps (``fedge.client.client_app.app``, ``fedge.server.server_app.app``) unchanged; the
client wrapper then corrupts the replies of the chosen attackers, or raises for a
node that drops out this round, which the simulation engine turns into an error
reply the server counts under ``failures``, or wipes a node's privacy state.

Who misbehaves is seeded, so a scenario replays exactly:

- attackers: the first ``fault-attackers`` partition ids of a permutation of all
  partition ids drawn from ``fault-seed`` (:func:`choose_attackers`);
- dropouts: one uniform draw per ``(fault-seed, round, partition-id)``
  (:func:`drops_out`), so a node's fate in a round does not depend on the others;
- wiped state: ``fault-wipe-state = "P@R"`` (comma-separated for several) wipes
  partition ``P``'s state before it handles round ``R``'s training message, as a
  node whose disk is lost: its state folder (privacy ledger and whatever else
  it keeps there) and everything in its ``context.state``
  (:func:`wipe_node_state`). Its ε must then continue from the coordinator's
  record of its releases.

Attacks on a trained update ``local`` against the round's global arrays ``global``
(``k`` = ``fault-scale``):

- ``sign-flip``: ``global - k * (local - global)`` (the update reversed and
  amplified; Blanchard et al., 2017, "Machine Learning with Adversaries");
- ``scale``: ``global + k * (local - global)`` (the update amplified);
- ``nan``: every floating-point value replaced by NaN;
- ``wrong-shape``: the first array of rank >= 1 gets one extra zero slice on
  axis 0, so exactly one shape is wrong.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedge.shared import keys
from fedge.shared.errors import ConfigError
from fedge.shared.records import record_scalar

logger = logging.getLogger(__name__)

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

Arrays = dict[str, np.ndarray]


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
def sign_flip(global_arrays: Arrays, local_arrays: Arrays, *, scale: float) -> Arrays:
    """``global - scale * (local - global)`` for floating arrays; others unchanged."""
    return {
        name: _float_only(
            local, global_arrays[name] - scale * (local - global_arrays[name])
        )
        for name, local in local_arrays.items()
    }


def scale_update(
    global_arrays: Arrays, local_arrays: Arrays, *, scale: float
) -> Arrays:
    """``global + scale * (local - global)`` for floating arrays; others unchanged."""
    return {
        name: _float_only(
            local, global_arrays[name] + scale * (local - global_arrays[name])
        )
        for name, local in local_arrays.items()
    }


def nan_update(local_arrays: Arrays) -> Arrays:
    """Every floating-point value NaN; shapes and dtypes kept."""
    return {
        name: _float_only(local, np.full(local.shape, np.nan))
        for name, local in local_arrays.items()
    }


def wrong_shape(local_arrays: Arrays) -> Arrays:
    """One extra zero slice on axis 0 of the first array of rank >= 1.

    Raises
    ------
    ValueError
        If every array is a scalar (there is no axis to extend).
    """
    out = dict(local_arrays)
    for name, array in local_arrays.items():
        if array.ndim >= 1:
            out[name] = np.concatenate([array, np.zeros_like(array[:1])], axis=0)
            return out
    raise ValueError("wrong_shape needs an array of rank >= 1; all arrays are scalars")


def corrupt(
    attack: str, global_arrays: Arrays, local_arrays: Arrays, *, scale: float
) -> Arrays:
    """Apply ``attack`` (one of :data:`ATTACKS`) to a trained update."""
    if attack == "sign-flip":
        return sign_flip(global_arrays, local_arrays, scale=scale)
    if attack == "scale":
        return scale_update(global_arrays, local_arrays, scale=scale)
    if attack == "nan":
        return nan_update(local_arrays)
    if attack == "wrong-shape":
        return wrong_shape(local_arrays)
    if attack == "none":
        return dict(local_arrays)
    raise ConfigError(f"'fault-attack' must be one of {list(ATTACKS)}, got {attack!r}")


def _float_only(local: np.ndarray, corrupted: np.ndarray) -> np.ndarray:
    """``corrupted`` in ``local``'s dtype if ``local`` holds floats, else ``local``."""
    # Integer buffers (counters) are not weights: an attacker leaves them be.
    if not np.issubdtype(local.dtype, np.floating):
        return local
    return np.asarray(corrupted, dtype=local.dtype)


# ------------------------------------------------------------ the Flower glue
app = ClientApp()
server_app = ServerApp()


def strip_faults(context: Context) -> tuple[Context, FaultConfig]:
    """Return a copy of ``context`` without ``fault-*`` keys, and the faults they set."""
    rest, faults = split_fault_keys(context.run_config)
    return dataclasses.replace(context, run_config=rest), fault_config(faults)


def _partition(context: Context) -> tuple[int, int]:
    config = context.node_config
    return int(config[keys.PARTITION_ID]), int(config[keys.NUM_PARTITIONS])


def wipe_node_state(context: Context) -> Path | None:
    """Wipe what a node keeps, as if its disk were lost: its state folder and ``context.state``.

    ``context`` is the node's context without ``fault-*`` keys. Returns the
    folder removed (None when the node keeps none).
    """
    from fedge.client.private_round import node_state_folder
    from fedge.client.process_cache import typed_config

    folder = node_state_folder(typed_config(context.run_config), context)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
    for name in list(context.state.keys()):
        del context.state[name]
    return folder


def _delegate(msg: Message, context: Context) -> tuple[Message, FaultConfig, int, int]:
    """Drop out (raise), wipe the node's state, and run the production ClientApp.

    Returns the reply, the faults, the node's partition id and the server round.
    """
    from fedge.client.client_app import app as production_app

    inner, faults = strip_faults(context)
    partition_id, _ = _partition(context)
    server_config = msg.content.config_records[keys.CONFIG]
    server_round = (
        int(record_scalar(server_config, keys.SERVER_ROUND))
        if keys.SERVER_ROUND in server_config
        else 0
    )
    if msg.metadata.message_type == MessageType.TRAIN and faults.wipes(
        partition_id, server_round
    ):
        folder = wipe_node_state(inner)
        logger.warning(
            "simulated lost disk: partition %d's state (%s and context.state) "
            "wiped before round %d (fault-wipe-state)",
            partition_id,
            folder,
            server_round,
        )
    if drops_out(
        seed=faults.seed,
        server_round=server_round,
        partition_id=partition_id,
        rate=faults.dropout,
    ):
        raise RuntimeError(
            f"simulated dropout: partition {partition_id} fails in round "
            f"{server_round} (fault-dropout = {faults.dropout})"
        )
    reply = production_app(msg, inner)
    context.state = inner.state  # keep whatever the production app stored
    return reply, faults, partition_id, server_round


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Production training, then the attack if this node is an attacker."""
    reply, faults, partition_id, server_round = _delegate(msg, context)
    _, num_partitions = _partition(context)
    attackers = choose_attackers(num_partitions, faults.attackers, seed=faults.seed)
    if (
        faults.attack == "none"
        or partition_id not in attackers
        or reply.has_error()
        or keys.ARRAYS not in reply.content
    ):
        return reply
    global_arrays = _numpy(msg.content.array_records[keys.ARRAYS])
    local_arrays = _numpy(reply.content.array_records[keys.ARRAYS])
    bad = corrupt(faults.attack, global_arrays, local_arrays, scale=faults.scale)
    content = RecordDict(dict(reply.content.items()))
    content[keys.ARRAYS] = ArrayRecord({n: Array(a) for n, a in bad.items()})
    # A warning, as the simulated lost disk is: the run's log carries the
    # ClientApps' warnings, so it shows which partition attacked in which round.
    logger.warning(
        "simulated attack: partition %d sends a %s update in round %d (fault-attack)",
        partition_id,
        faults.attack,
        server_round,
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Production evaluation (attackers evaluate honestly; dropped nodes fail)."""
    reply, *_ = _delegate(msg, context)
    return reply


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Return the production ServerApp, blind to the ``fault-*`` keys."""
    from fedge.server.server_app import app as production_server

    inner, _ = strip_faults(context)
    production_server(grid, inner)


def _numpy(record: ArrayRecord) -> Arrays:
    return {name: array.numpy() for name, array in record.items()}

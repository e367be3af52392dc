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
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedge.shared import keys
from fedge.shared.errors import ConfigError
from fedge.shared.records import record_scalar
from fedge.simulations.fault_config import (
    ATTACKS,
    FaultConfig,
    choose_attackers,
    drops_out,
    fault_config,
    split_fault_keys,
)

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]


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

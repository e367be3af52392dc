"""Per-client evaluation: the global model scored on every node's local test split.

Flower's strategies evaluate on a sampled fraction of nodes and reply with one
weighted mean (``fraction-evaluate``); whether the model serves *every* site
needs each node's own figures. So on the rounds that are due (every
``evaluate-interval`` rounds, and the one that ends the run), the coordinator
sends the global model to every connected node as an ordinary Flower
``evaluate`` message (the ClientApp's ``@app.evaluate`` handler answers it) and
keeps each reply.

Each node costs a message: on Flower's simulation engine, evaluating all 1,000
nodes of ``scale-1000`` took about five of its rounds of 100 nodes. So at most
``fairness-max-clients`` nodes (default 100) are asked, a sample drawn from
``(sampler-seed, round)`` when more are connected (0 = every node, whatever
the cost). A sample's worst client need not be the federation's worst; the
log and the model card say when the figures come from a sample.

The figures leave the nodes unprotected: under DP they are released outside the
guarantee, which is why ``fairness-report = false`` turns them off.
"""

from __future__ import annotations

import logging
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedge.server.frozen_arrays import ArraysWire
from fedge.server.node_sampling import sampling_rng
from fedge.shared import keys
from fedge.shared.config import ReportConfig
from fedge.shared.errors import FedgeError
from fedge.shared.records import record_list, record_scalar

logger = logging.getLogger(__name__)


def evaluation_due(server_round: int, *, ends_run: bool, report: ReportConfig) -> bool:
    """Whether ``server_round`` evaluates every client.

    The round that ends the run always does (when ``fairness-report`` is on):
    the last planned round, or the round after which the run stops early, so
    every model a run ends with is scored on every node. Others do every
    ``evaluate-interval`` rounds (0: none).
    """
    if not report.fairness_report:
        return False
    if ends_run:
        return True
    interval = report.evaluate_interval
    return interval > 0 and server_round % interval == 0


def nodes_to_evaluate(
    connected: list[int],
    *,
    skip: frozenset[int],
    max_nodes: int,
    sampler_seed: int,
    server_round: int,
) -> list[int]:
    """Return the nodes to ask, sorted: every node not skipped, or a sample.

    With ``max_nodes`` > 0 and more nodes than that, a sample of ``max_nodes``
    drawn from ``(sampler_seed, server_round)``, so a resumed run asks the same
    nodes; 0 means every node.
    """
    eligible = sorted(node for node in connected if node not in skip)
    if max_nodes <= 0 or len(eligible) <= max_nodes:
        return eligible
    rng = sampling_rng(sampler_seed, server_round, "client-evaluation")
    return sorted(rng.sample(eligible, max_nodes))


def evaluate_every_node(
    grid: Grid,
    arrays: ArrayRecord,
    config: ConfigRecord,
    *,
    server_round: int,
    timeout_s: float,
    skip: frozenset[int] = frozenset(),
    max_nodes: int = 0,
    sampler_seed: int = 0,
    wire: ArraysWire | None = None,
) -> list[dict[str, Any]]:
    """Send ``arrays`` to every connected node for evaluation; return their figures.

    Parameters
    ----------
    grid : Grid
        The ServerApp's grid.
    arrays : ArrayRecord
        The global model to evaluate.
    config : ConfigRecord
        What the ClientApp needs to rebuild the model (spec, preprocessing).
    server_round : int
        The round whose model this is (sent as ``server-round``).
    timeout_s : float
        Longest wait for the replies.
    skip : frozenset of int, default empty
        Nodes not to ask: those that did not answer this round's training
        (a hung node would otherwise cost the round a second full timeout).
    max_nodes : int, default 0
        Ask at most this many nodes, a seeded sample (:func:`nodes_to_evaluate`);
        0 asks every node.
    sampler_seed : int, default 0
        Seeds that sample, with ``server_round``.
    wire : ArraysWire, optional
        With frozen parameters: ``arrays`` are the full model, and each node
        gets the frozen ones only if it does not hold them
        (:mod:`fedge.server.frozen_arrays`).

    Returns
    -------
    list of dict
        One :func:`client_entry` per node that answered, by node id; a node
        that failed or did not answer in time is logged and left out.
    """
    connected = sorted(grid.get_node_ids())
    skipped = [node for node in connected if node in skip]
    if skipped:
        logger.warning(
            "Round %d per-client evaluation: %d node(s) that did not answer this "
            "round's training are not asked (%s).",
            server_round,
            len(skipped),
            ", ".join(str(n) for n in skipped),
        )
    node_ids = nodes_to_evaluate(
        connected,
        skip=skip,
        max_nodes=max_nodes,
        sampler_seed=sampler_seed,
        server_round=server_round,
    )
    if len(node_ids) < len(connected) - len(skipped):
        logger.info(
            "Round %d per-client evaluation: a seeded sample of %d of %d nodes "
            "(fairness-max-clients = %d; 0 asks every node).",
            server_round,
            len(node_ids),
            len(connected) - len(skipped),
            max_nodes,
        )
    wire = wire or ArraysWire()
    record = RecordDict(
        {
            keys.ARRAYS: wire.split(arrays),
            keys.CONFIG: ConfigRecord({**config, keys.SERVER_ROUND: server_round}),
        }
    )
    messages = [
        Message(content=record, message_type=MessageType.EVALUATE, dst_node_id=node)
        for node in node_ids
    ]
    replies, _ = wire.exchange(grid, messages, timeout_s=timeout_s)
    entries = [
        entry
        for entry in (client_entry(m) for m in replies if not m.has_error())
        if entry is not None
    ]
    missing = len(node_ids) - len(entries)
    if missing:
        logger.warning(
            "Round %d per-client evaluation: %d of %d nodes did not answer; "
            "their figures are missing from the fairness summary.",
            server_round,
            missing,
            len(node_ids),
        )
    return sorted(entries, key=lambda e: int(e["node-id"]))


def client_entry(reply: Message) -> dict[str, Any] | None:
    """One node's evaluation reply as its ``metrics.jsonl`` entry, or None.

    Keys: ``node-id``, ``accuracy``, ``loss``, ``num-examples``,
    ``label-counts`` (examples of each class in the node's test split) and,
    for a simulated node, its ``partition-id``. A reply without these figures
    is logged with its node id and gives None.
    """
    node_id = int(reply.metadata.src_node_id)
    try:
        metrics = reply.content.metric_records[keys.METRICS]
        entry: dict[str, Any] = {
            "node-id": node_id,
            "accuracy": float(record_scalar(metrics, keys.EVAL_ACCURACY)),
            "loss": float(record_scalar(metrics, keys.EVAL_LOSS)),
            keys.NUM_EXAMPLES: int(record_scalar(metrics, keys.NUM_EXAMPLES)),
            keys.LABEL_COUNTS: [
                int(c) for c in record_list(metrics, keys.LABEL_COUNTS)
            ],
        }
        if keys.PARTITION_ID in metrics:
            entry[keys.PARTITION_ID] = int(record_scalar(metrics, keys.PARTITION_ID))
    except (KeyError, TypeError, ValueError, FedgeError) as e:
        logger.warning(
            "Evaluation reply from node %d lacks its figures (%s); left out of "
            "the fairness summary.",
            node_id,
            e,
        )
        return None
    return entry

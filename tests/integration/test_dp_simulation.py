"""DP-SGD federations on the simulation engine: ε columns, refusals, early end."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from fedge.client.node_data import load_node_data
from fedge.reports.run_progress import read_progress
from fedge.shared.config import from_run_config
from fedge.shared.datasets import load_builtin
from fedge.shared.run_folder import NODE_STATE_DIR
from fedge.simulations.simulate import simulate

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def _epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=ORDERS)
    return get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)[0]


def _opacus_epsilon(releases: list[list[float]], delta: float) -> float:
    """Opacus's RDP accountant over ``[round, σ, q, steps]`` releases."""
    accountant = RDPAccountant()
    accountant.history = [(s, q, n) for _, s, q, n in releases]
    return float(accountant.get_epsilon(delta=delta))


@functools.cache
def _suggestion(num_examples: int, *, rounds: int, epsilon: float) -> dict:
    """``fedge privacy --suggest --format json``, run as a user runs it.

    Once per node size: the command is deterministic, and each run of it is a
    fresh interpreter importing Opacus (seconds, ten times over in the
    10-client test, whose nodes have three sizes).
    """
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedge.cli.app",
            "privacy",
            "--suggest",
            "--num-examples",
            str(num_examples),
            "--rounds",
            str(rounds),
            "--target-epsilon",
            str(epsilon),
            "--format",
            "json",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def test_dp_run_on_ten_clients_improves_and_reports_epsilon(tmp_path: Path) -> None:
    target, wiped = 8.0, 3
    run_dir = simulate(
        {
            "dp-mode": "sample",
            "target-epsilon": target,
            "num-server-rounds": 3,
            # Partition 3 loses its disk (ledger and context.state) mid-run.
            "fault-wipe-state": f"{wiped}@2",
        },
        num_clients=10,
        output_dir=tmp_path,
        run_name="dp10",
        echo=lambda *_: None,
    )
    metrics = pd.read_csv(run_dir / "metrics.csv")
    trained = metrics[metrics["round"] > 0]
    assert (
        trained["central-accuracy"].iloc[-1] > metrics["central-accuracy"].iloc[0] + 0.2
    )
    assert trained["epsilon-max"].is_monotonic_increasing
    assert (trained["epsilon-max"] > 0).all() and (
        trained["epsilon-max"] <= target + 1e-6
    ).all()
    assert (trained["epsilon-mean"] <= trained["epsilon-max"] + 1e-9).all()
    records = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    last_clients = records[-1]["clients"]
    assert len(last_clients) == 10
    assert {"epsilon", "delta", "noise-multiplier", "sample-rate", "dp-steps"} <= set(
        last_clients[0]
    )
    # The coordinator's own record: every release of every node, ε from it equal
    # to Opacus's accountant, and no honest reply contradicted it.
    assert (trained["dropped"] == 0).all()
    record = json.loads((run_dir / "privacy-record.json").read_text())
    assert sorted(len(v) for v in record["releases"].values()) == [3] * 10
    for client in last_clients:
        releases = record["releases"][str(client["node-id"])]
        assert client["epsilon-coordinator"] == pytest.approx(
            _opacus_epsilon(releases, client["delta"]), rel=1e-9
        )
        assert client["epsilon"] == pytest.approx(client["epsilon-reported"])
        # Every release is what `fedge privacy --suggest` says the defaults train
        # for a node of this size (the rule: batch, steps, and the σ they imply).
        suggested = _suggestion(client["num-examples"], rounds=3, epsilon=target)
        assert [(s, q, n) for _, s, q, n in releases] == [
            (
                suggested["noise_multiplier"],
                suggested["sample_rate"],
                suggested["steps_per_round"],
            )
        ] * 3
        assert suggested["sample_rate"] == 1.0 and suggested["steps_per_round"] == 4
    # The wiped node started round 2 with no ledger: it continued from the
    # coordinator's record, so each ε it reported is Opacus's over the record up
    # to that round (never reset, never lower than before the wipe).
    node_of = {
        e["partition-id"]: e["node-id"] for e in records[-1]["client-evaluation"]
    }
    victim = node_of[wiped]
    reported = {
        r["round"]: c["epsilon-reported"]
        for r in records
        for c in r.get("clients", [])
        if c["node-id"] == victim
    }
    releases = record["releases"][str(victim)]
    assert sorted(reported) == [r for r, *_ in releases] == [1, 2, 3]
    (delta,) = (c["delta"] for c in last_clients if c["node-id"] == victim)
    for server_round, epsilon in reported.items():
        so_far = [r for r in releases if r[0] <= server_round]
        assert epsilon == pytest.approx(_opacus_epsilon(so_far, delta), rel=1e-9)
    assert reported[1] < reported[2] < reported[3]
    # It was wiped (once), and found its ledger empty against the record's one
    # release; its ledger was rebuilt on disk from the record, then continued.
    log = (run_dir / "flower.log").read_text()
    assert log.count(f"simulated lost disk: partition {wiped}'s state") == 1
    assert log.count("holds more than its own ledger (1 releases, own 0;") == 1
    (ledger,) = (run_dir / NODE_STATE_DIR).glob(
        f"partition-{wiped}-10/privacy-ledger-*.json"
    )
    assert json.loads(ledger.read_text())["server-rounds"] == [1, 2, 3]
    privacy = json.loads((run_dir / "model.json").read_text())["privacy"]
    assert privacy["dp-mode"] == "sample"
    assert privacy["epsilon-max"] == pytest.approx(trained["epsilon-max"].max())
    assert privacy["max-grad-norm"] == 1.0 and privacy["noise-multiplier"] > 0

    # `fedge status` on the real folder: every node's ε, the rounds, no ETA left.
    progress = read_progress(run_dir)
    assert (progress.state, progress.rounds_done, progress.planned_rounds) == (
        "complete",
        3,
        3,
    )
    assert progress.epsilon_per_node == {
        str(c["node-id"]): pytest.approx(c["epsilon"]) for c in last_clients
    }
    assert progress.epsilon_max == pytest.approx(trained["epsilon-max"].max())
    assert [r.replies for r in progress.rounds] == list(trained["replies"])
    assert progress.last_accuracy == pytest.approx(trained["central-accuracy"].iloc[-1])
    assert progress.eta_s is None and progress.resume_command is None
    # Per-client figures are on by default, and said to be outside the guarantee.
    assert len(records[-1]["client-evaluation"]) == 10
    assert "released outside the DP guarantee" in (run_dir / "report.md").read_text()


def test_nodes_past_their_budget_refuse_and_the_rest_finish_the_run(
    tmp_path: Path,
) -> None:
    # Label-skewed partitions give nodes different sizes, hence different sampling
    # rates: at a fixed σ the small nodes spend their budget first.
    overrides = {
        "dp-mode": "sample",
        "noise-multiplier": 1.0,
        "target-epsilon": 5.0,
        "target-delta": 1e-4,
        "local-epochs": 1,
        "batch-size": 32,  # the budget arithmetic below assumes it
        "num-server-rounds": 4,
        "partitioning": "dirichlet",
        "dirichlet-alpha": 0.3,
    }
    config = from_run_config(overrides, fill_defaults=True)
    reference = load_builtin("digits", "test").preprocessing
    sizes = [
        len(
            load_node_data(
                {"partition-id": i, "num-partitions": 4}, config.data, reference
            ).train
        )
        for i in range(4)
    ]
    # Independently of fedge: which nodes can afford round r (Opacus's RDP analysis).
    expected_refusals = []
    for r in range(1, 5):
        refusing = 0
        for n in sizes:
            q, steps = min(1.0, 32 / n), max(1, round(n / 32))
            trained_rounds = max(
                k
                for k in range(0, 5)
                if k == 0 or _epsilon(q, 1.0, k * steps, 1e-4) <= 5.0
            )
            refusing += r > trained_rounds
        expected_refusals.append(refusing)
    assert 0 < expected_refusals[-1] < 4, (
        expected_refusals
    )  # the scenario is what it claims

    run_dir = simulate(
        overrides,
        num_clients=4,
        output_dir=tmp_path,
        run_name="budget",
        echo=lambda *_: None,
    )
    metrics = pd.read_csv(run_dir / "metrics.csv")
    trained = metrics[metrics["round"] > 0]
    assert trained["refused"].tolist() == expected_refusals
    assert (trained["aggregated"] == 4 - np.array(expected_refusals)).all()
    assert (trained["epsilon-max"] <= 5.0).all()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "complete"
    assert json.loads((run_dir / "model.json").read_text())["provenance"]["rounds"] == 4
    log = (run_dir / "flower.log").read_text()
    # Logged once per node, not once per round.
    assert log.count("refused to train") == expected_refusals[-1]


def test_the_run_ends_cleanly_when_no_node_can_train(tmp_path: Path) -> None:
    overrides = {
        "dp-mode": "sample",
        "noise-multiplier": 1.0,
        "target-epsilon": 3.0,
        "target-delta": 1e-4,
        "local-epochs": 1,
        "batch-size": 32,  # the budget arithmetic below assumes it
        "num-server-rounds": 5,
    }
    run_dir = simulate(
        overrides,
        num_clients=3,
        output_dir=tmp_path,
        run_name="spent",
        echo=lambda *_: None,
    )
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "complete"
    assert "privacy budget" in status["message"]
    final_round = status["final_round"]
    assert final_round < 5
    assert (run_dir / "model.json").is_file()
    # The model it ends with is scored on every node, like a last round's
    # (evaluate-interval = 0: no other round is).
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    evaluated = [r["round"] for r in records if "client-evaluation" in r]
    assert evaluated == [final_round]
    per_client = records[-1]["client-evaluation"]
    assert records[-1]["round"] == final_round
    assert sorted(c["partition-id"] for c in per_client) == [0, 1, 2]
    metrics = pd.read_csv(run_dir / "metrics.csv")
    last = metrics[metrics["round"] == final_round].iloc[0]
    assert last["clients-evaluated"] == 3
    assert last["client-accuracy-mean"] == pytest.approx(
        np.mean([c["accuracy"] for c in per_client])
    )
    card = json.loads((run_dir / "model_card.json").read_text())
    assert card["performance"]["per-client"]["round"] == final_round


def test_central_dp_reports_user_level_epsilon(tmp_path: Path) -> None:
    sigma, rounds, nodes = 0.8, 2, 4
    run_dir = simulate(
        {
            "dp-mode": "central",
            "noise-multiplier": sigma,
            "clipping-norm": 5.0,
            "num-server-rounds": rounds,
            "local-epochs": 1,
            # A deployment that must not release per-client figures.
            "fairness-report": False,
        },
        num_clients=nodes,
        output_dir=tmp_path,
        run_name="central",
        echo=lambda *_: None,
    )
    metrics = pd.read_csv(run_dir / "metrics.csv")
    trained = metrics[metrics["round"] > 0]
    # Every node sampled each round (q = 1), δ below 1/N: DP-FedAvg's accounting.
    delta = trained["central-dp-delta"].iloc[-1]
    assert delta < 1 / nodes
    expected = [_epsilon(1.0, sigma, r, delta) for r in range(1, rounds + 1)]
    assert trained["epsilon-max"].tolist() == pytest.approx(expected, rel=1e-6)
    privacy = json.loads((run_dir / "model.json").read_text())["privacy"]
    assert privacy["dp-mode"] == "central" and privacy["level"] == "user"
    assert privacy["epsilon-max"] == pytest.approx(expected[-1], rel=1e-6)
    assert privacy["noise-multiplier"] == sigma and privacy["clipping-norm"] == 5.0
    # fairness-report = false: no node's figures left it.
    jsonl = (run_dir / "metrics.jsonl").read_text()
    assert "client-evaluation" not in jsonl and "label-counts" not in jsonl
    assert metrics["clients-evaluated"].isna().all()
    assert "Per-client accuracy" not in (run_dir / "report.md").read_text()

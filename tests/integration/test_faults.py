"""Fault-injection scenarios on the simulation engine: dropouts, bad updates, attacks.

Each run starts a private SuperLink and Ray (about 20 s of overhead), so the
runs are few and small. The robustness comparison uses the packaged attack
scenarios with 10 clients, 2 of them sign-flip attackers; FedAvg collapses,
FedMedian and Krum stay within 3 points of clean runs.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from shared.run_folder import read_status
from simulations.fault_injection import drops_out
from simulations.scenario_file import load_scenario
from simulations.simulate import simulate

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def quiet(*_: object) -> None:
    pass


def run(tmp_path: Path, name: str, overrides: dict, num_clients: int) -> pd.DataFrame:
    run_dir = simulate(
        overrides,
        num_clients=num_clients,
        output_dir=tmp_path,
        run_name=name,
        echo=quiet,
    )
    return pd.read_csv(run_dir / "metrics.csv").set_index("round")


def test_dropped_nodes_are_counted_as_failures_and_the_run_completes(tmp_path):
    seed, rate, clients, rounds = 4, 0.3, 4, 3
    expected = [
        sum(
            drops_out(seed=seed, server_round=r, partition_id=p, rate=rate)
            for p in range(clients)
        )
        for r in range(1, rounds + 1)
    ]
    assert sum(expected) > 0 and max(expected) < clients  # the seed shows something

    metrics = run(
        tmp_path,
        "dropout",
        {
            "num-server-rounds": rounds,
            "local-epochs": 1,
            "fault-dropout": rate,
            "fault-seed": seed,
        },
        clients,
    )

    assert list(metrics.loc[1:, "failures"]) == expected
    assert list(metrics.loc[1:, "replies"]) == [clients - f for f in expected]
    assert list(metrics.loc[1:, "sampled"]) == [clients] * rounds
    assert metrics.loc[rounds, "central-accuracy"] > metrics.loc[0, "central-accuracy"]
    run_dir = tmp_path / "dropout"
    assert (
        "failed replies, all rounds: " + str(sum(expected))
        in (run_dir / "report.md").read_text()
    )
    assert (run_dir / "plots" / "participation.png").is_file()


def test_nan_updates_are_dropped_by_validation_and_training_goes_on(tmp_path):
    metrics = run(
        tmp_path,
        "nan",
        {
            "num-server-rounds": 2,
            "local-epochs": 1,
            "fault-attack": "nan",
            "fault-attackers": 1,
        },
        3,
    )

    assert list(metrics.loc[1:, "dropped"]) == [1, 1]
    assert list(metrics.loc[1:, "replies"]) == [3, 3]
    assert list(metrics.loc[1:, "failures"]) == [0, 0]
    assert metrics.loc[2, "central-accuracy"] > metrics.loc[0, "central-accuracy"] + 0.2
    log = (tmp_path / "nan" / "flower.log").read_text()
    assert "NaN" in log and "update dropped" in log


# Two sign-flip attackers of ten (the packaged attack scenarios). Three tests of
# at most two runs each rather than one of five: pytest-xdist can then spread
# them over both workers instead of one worker running ~4 min at the end.
CLIENTS = 10


def final_accuracy(metrics: pd.DataFrame) -> float:
    return float(metrics["central-accuracy"].iloc[-1])


def test_fedmedian_stays_within_3_points_of_clean_fedavg_under_attack(tmp_path):
    clean = run(tmp_path, "clean-fedavg", load_scenario("iid"), CLIENTS)
    median = run(tmp_path, "median", load_scenario("attack-signflip-median"), CLIENTS)

    print("final central accuracy:", final_accuracy(clean), final_accuracy(median))
    assert final_accuracy(clean) > 0.9
    assert final_accuracy(median) >= final_accuracy(clean) - 0.03


def test_krum_stays_within_3_points_of_itself_without_attackers(tmp_path):
    # Krum keeps one client's model per round, which costs accuracy even
    # without attackers: compare it with itself, clean.
    scenario = load_scenario("attack-signflip-krum")
    krum = run(tmp_path, "krum", scenario, CLIENTS)
    clean = run(tmp_path, "clean-krum", {**scenario, "fault-attackers": 0}, CLIENTS)

    print("final central accuracy:", final_accuracy(krum), final_accuracy(clean))
    assert final_accuracy(krum) >= final_accuracy(clean) - 0.03


def test_fedavg_collapses_under_attack_and_the_run_still_completes(tmp_path):
    # The attacked FedAvg model grows tenfold per round until its outputs are
    # no longer finite: the run must still complete and score it (as chance).
    fedavg = run(tmp_path, "fedavg", load_scenario("attack-signflip-fedavg"), CLIENTS)

    assert final_accuracy(fedavg) < 0.3  # near chance (0.1 for 10 digits)
    assert read_status(tmp_path / "fedavg")["state"] == "complete"

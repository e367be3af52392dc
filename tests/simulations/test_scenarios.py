"""Scenario files: every packaged one parses, validates and runs its own client count."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedge.shared.config import from_run_config
from fedge.shared.errors import FedgeError
from fedge.simulations.fault_config import fault_config, split_fault_keys
from fedge.simulations.scenario_file import (
    SCENARIOS_DIR,
    load_scenario,
    read_scenario,
    resolve_scenario,
    scenario_names,
)
from fedge.simulations.simulate import preflight

SCENARIOS = sorted(SCENARIOS_DIR.glob("*.toml"))


def test_the_promised_scenarios_exist():
    assert {
        "iid",
        "dirichlet-0.1",
        "shards",
        "dropout-30",
        "attack-signflip-fedavg",
        "attack-signflip-median",
        "attack-signflip-krum",
        "nan-updates",
        "wrong-shape",
        "dp-sample",
    } <= set(scenario_names())


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_parses_and_validates(path: Path):
    scenario = read_scenario(path)
    overrides, faults = split_fault_keys(scenario.overrides)

    config = from_run_config(overrides, fill_defaults=True)
    fault_config(faults, num_clients=scenario.clients)
    # Data and partitions fit its own client count (what `fedge simulate` checks).
    partitions = preflight(config, scenario.clients)
    assert len(partitions) == scenario.clients


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_sets_the_client_count_its_description_promises(path: Path):
    scenario = read_scenario(path)
    promised = re.search(r"([\d,]+) (?:virtual |IID )?clients", scenario.description)

    assert promised, f"{path.name}: the first line names no client count"
    assert scenario.clients == int(promised.group(1).replace(",", ""))


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_no_comment_asks_the_user_to_retype_a_setting(path: Path):
    usage = [line for line in path.read_text().splitlines() if "fedge simulate" in line]

    assert not any("--clients" in line or "--rounds" in line for line in usage)


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_starts_with_a_comment_saying_what_it_shows(path: Path):
    lines = path.read_text().splitlines()

    assert lines[0].startswith("# ")
    assert any(
        "fedge simulate --scenario" in line for line in lines if line.startswith("#")
    )


@pytest.mark.parametrize(
    ("name", "attack", "strategy"),
    [
        ("attack-signflip-fedavg", "sign-flip", "fedavg"),
        ("attack-signflip-median", "sign-flip", "fedmedian"),
        ("attack-signflip-krum", "sign-flip", "krum"),
        ("nan-updates", "nan", "fedavg"),
        ("wrong-shape", "wrong-shape", "fedavg"),
    ],
)
def test_attack_scenarios_have_2_attackers_of_10(name, attack, strategy):
    overrides, faults = split_fault_keys(load_scenario(name))

    assert fault_config(faults).attack == attack
    assert fault_config(faults).attackers == 2
    assert overrides["strategy"] == strategy


def test_krum_scenario_tells_krum_how_many_attackers_to_expect():
    assert load_scenario("attack-signflip-krum")["num-malicious-nodes"] == 2


def test_dropout_scenario_drops_30_percent():
    _, faults = split_fault_keys(load_scenario("dropout-30"))

    assert fault_config(faults).dropout == 0.3


def test_dp_scenario_uses_sample_level_dp():
    assert load_scenario("dp-sample")["dp-mode"] == "sample"


@pytest.mark.parametrize("name", ["iid", "iid.toml"])
def test_bare_name_resolves_to_the_packaged_scenario(name):
    assert resolve_scenario(name) == SCENARIOS_DIR / "iid.toml"


def test_a_path_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("iid.toml").write_text('strategy = "krum"\n')

    assert load_scenario("iid.toml") == {"strategy": "krum"}


def test_unknown_scenario_name_lists_the_packaged_ones():
    with pytest.raises(
        FedgeError,
        match=r"scenario 'no-such' is neither a file nor a packaged scenario; "
        r"packaged: .*attack-signflip-fedavg.*iid",
    ):
        resolve_scenario("no-such")


def test_a_missing_path_is_not_looked_up_by_name(tmp_path):
    with pytest.raises(FedgeError, match=r"scenario '.*/iid\.toml' is neither"):
        resolve_scenario(tmp_path / "iid.toml")

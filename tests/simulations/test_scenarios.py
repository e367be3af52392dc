"""Every packaged scenario parses, validates and fits the default 10 clients."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import from_run_config
from shared.errors import FedgeError
from simulations.fault_injection import fault_config, split_fault_keys
from simulations.simulate import (
    SCENARIOS_DIR,
    load_scenario,
    preflight,
    resolve_scenario,
    scenario_names,
)

SCENARIOS = sorted(SCENARIOS_DIR.glob("*.toml"))
DEFAULT_CLIENTS = 10


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
    overrides, faults = split_fault_keys(load_scenario(path))

    config = from_run_config(overrides, fill_defaults=True)
    fault_config(faults, num_clients=DEFAULT_CLIENTS)
    # Data and partitions fit the default client count (what `fedge simulate` checks).
    preflight(config, DEFAULT_CLIENTS)


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

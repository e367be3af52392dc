"""Scenario files carry the whole simulated run: client count, CPU share, data.

Nothing here starts Flower: the runs are stopped at the ``flwr run`` call, after
every check and after ``partitions.csv`` is written.
"""

from __future__ import annotations

import contextlib
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

import fedge.simulations.simulate as simulate_module
from fedge.cli.app import build_parser
from fedge.cli.app import main as cli_main
from fedge.cli.simulate import resolve_arguments
from fedge.shared.errors import ConfigError
from fedge.simulations.scenario_file import SCENARIOS_DIR, read_scenario

SCENARIOS = sorted(SCENARIOS_DIR.glob("*.toml"))


def parse(*argv):
    return build_parser("simulate").parse_args(["simulate", *argv])


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- reading
def test_simulation_keys_are_kept_apart_from_run_config_keys(tmp_path):
    path = write(
        tmp_path,
        '# Three clients.\nclients = 3\ncpus-per-client = 2\nstrategy = "krum"\n'
        "fault-attackers = 1\n",
    )

    scenario = read_scenario(path)

    assert scenario.simulation == {"clients": 3, "cpus-per-client": 2}
    assert scenario.overrides == {"strategy": "krum", "fault-attackers": 1}
    assert scenario.description == "Three clients."
    assert scenario.clients == 3


def test_relative_paths_are_relative_to_the_scenario_file(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    path = write(
        tmp_path / "sub",
        'data = "d/all.csv"\neval-data-path = "held.csv"\nnode-data = "/abs/x"\n'
        'initial-weights = "w/backbone.pt"\nsign-key = "keys/coordinator.pem"\n',
    )
    monkeypatch.chdir(tmp_path)

    scenario = read_scenario(path)

    assert scenario.simulation["data"] == str(tmp_path / "sub" / "d" / "all.csv")
    assert scenario.overrides["eval-data-path"] == str(tmp_path / "sub" / "held.csv")
    assert scenario.simulation["node-data"] == "/abs/x"
    assert scenario.overrides["initial-weights"] == str(
        tmp_path / "sub" / "w" / "backbone.pt"
    )
    assert scenario.overrides["sign-key"] == str(
        tmp_path / "sub" / "keys" / "coordinator.pem"
    )


def test_an_unknown_key_is_refused_with_file_key_and_closest_valid_key(tmp_path):
    path = write(tmp_path, "client = 3\n")

    with pytest.raises(
        ConfigError,
        match=r"scenario .*s\.toml: unknown key 'client' \(did you mean 'clients'\?\)",
    ):
        read_scenario(path)


def test_an_unknown_run_config_key_gets_the_closest_run_config_key(tmp_path):
    path = write(tmp_path, "learning_rate = 0.1\n")

    with pytest.raises(ConfigError, match=r"did you mean 'learning-rate'\?"):
        read_scenario(path)


def test_a_key_like_no_other_lists_what_is_valid(tmp_path):
    path = write(tmp_path, "zzz = 1\n")

    with pytest.raises(
        ConfigError,
        match=r"unknown key 'zzz' \(valid keys are the run-config keys of "
        r"pyproject.toml \[tool.flwr.app.config\], fault-\* keys and clients, ",
    ):
        read_scenario(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('clients = "3"', r"'clients' must be int, got '3'"),
        ("clients = 0", r"'clients' must be >= 1, got 0"),
        ("cpus-per-client = true", r"'cpus-per-client' must be int, got True"),
        ("data = 3", r"'data' must be str, got 3"),
    ],
)
def test_a_simulation_key_of_the_wrong_type_is_refused(tmp_path, line, message):
    with pytest.raises(ConfigError, match=message):
        read_scenario(write(tmp_path, line + "\n"))


# ---------------------------------------------------------------- flags win
def test_flags_override_the_scenario_and_say_so(tmp_path):
    path = write(tmp_path, "clients = 3\nnum-server-rounds = 15\nbatch-size = 8\n")

    arguments = resolve_arguments(
        parse("--scenario", str(path), "--clients", "5", "--rounds", "2")
    )

    assert arguments.simulation == {"clients": 5}
    assert arguments.overrides == {"num-server-rounds": 2, "batch-size": 8}
    assert arguments.notes == [
        "num-server-rounds 2 from --rounds (scenario: 15)",
        "clients 5 from --clients (scenario: 3)",
    ]


def test_a_flag_equal_to_the_scenario_is_no_override(tmp_path):
    path = write(tmp_path, "clients = 3\n")

    assert (
        resolve_arguments(parse("--scenario", str(path), "--clients", "3")).notes == []
    )


def test_set_reaches_simulation_keys_too(tmp_path):
    path = write(tmp_path, "clients = 3\n")

    arguments = resolve_arguments(parse("--scenario", str(path), "--set", "clients=4"))

    assert arguments.simulation == {"clients": 4}
    assert arguments.notes == ["clients 4 from --set (scenario: 3)"]


def test_without_a_scenario_nothing_is_noted():
    arguments = resolve_arguments(parse("--clients", "4", "--rounds", "2"))

    assert arguments.simulation == {"clients": 4}
    assert arguments.notes == []


# ---------------------------------------------------------------- --list
def test_list_prints_every_packaged_scenario_with_description_and_clients(capsys):
    assert cli_main(["simulate", "--list"]) == 0

    lines = capsys.readouterr().out.splitlines()
    for path in SCENARIOS:
        first = path.read_text().splitlines()[0].lstrip("# ")
        clients = tomllib.loads(path.read_text())["clients"]
        (line,) = [x for x in lines if x.split()[0] == path.stem]
        assert line.endswith(first)
        assert f" {clients} clients " in line


# ---------------------------------------------------------------- runs
@pytest.fixture
def submission(monkeypatch, stand_in_engines):
    """Run simulate() through every check up to `flwr run`; capture what it submits."""
    seen = {}

    class Submitted(Exception):
        pass

    @contextlib.contextmanager
    def fake_superlink(workdir, engine, ray_address, own_engine):
        yield SimpleNamespace(env={}), True

    def fake_stream(command, env, log_path, *, cwd, verbose, echo, stop_when=None):
        seen["federation"] = command[command.index("--federation-config") + 1]
        raise Submitted

    monkeypatch.setattr(simulate_module, "superlink_for_run", fake_superlink)
    monkeypatch.setattr(simulate_module, "stream_flwr_run", fake_stream)
    seen["stopped"] = Submitted
    return seen


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_each_packaged_scenario_submits_its_declared_client_count(
    path, tmp_path, submission, capsys
):
    """Load, preflight and partitions.csv for every scenario; the run stops at submit.

    End to end (real Flower) only dp-digits-3-clients runs, in
    tests/integration/test_scenario_runs.py: every run costs seconds.
    """
    declared = tomllib.loads(path.read_text())["clients"]

    with pytest.raises(submission["stopped"]):
        cli_main(
            [
                "simulate",
                "--scenario",
                path.stem,
                "--output-dir",
                str(tmp_path),
                "--run-name",
                "r",
            ]
        )

    assert f"num-supernodes={declared} " in submission["federation"] + " "
    assert len(pd.read_csv(tmp_path / "r" / "partitions.csv")) == declared
    assert f"fedge simulate: {declared} clients," in capsys.readouterr().out


def test_the_summary_line_says_which_flag_overrode_the_scenario(
    tmp_path, submission, capsys
):
    with pytest.raises(submission["stopped"]):
        cli_main(
            [
                "simulate",
                "--scenario",
                "dp-digits-3-clients",
                "--clients",
                "4",
                "--rounds",
                "2",
                "--output-dir",
                str(tmp_path),
                "--run-name",
                "r",
            ]
        )

    out = capsys.readouterr().out
    assert "fedge simulate: 4 clients, 2 rounds," in out
    assert (
        "(overriding the scenario: num-server-rounds 2 from --rounds (scenario: 15); "
        "clients 4 from --clients (scenario: 3))"
    ) in out
    assert "num-supernodes=4 " in submission["federation"] + " "


def test_scenario_data_and_cluster_keys_reach_the_run(tmp_path, monkeypatch):
    import fedge.simulations.simulate as simulation
    from fedge.simulations.own_data import OwnData

    seen = {}

    def fake_simulate(overrides, **kwargs):
        seen.update(kwargs, overrides=overrides)
        raise SystemExit(0)

    monkeypatch.setattr(simulation, "simulate", fake_simulate)
    path = write(
        tmp_path,
        'data = "all.csv"\npartition-by = "site"\nlabel-column = "y"\n'
        'ray-address = "10.0.0.5:6379"\ncpus-per-client = 2\n',
    )

    with pytest.raises(SystemExit):
        cli_main(["simulate", "--scenario", str(path), "--label-column", "z"])

    assert seen["own_data"] == OwnData(
        data=str(tmp_path / "all.csv"), partition_by="site"
    )
    assert seen["ray_address"] == "10.0.0.5:6379"
    assert seen["cpus_per_client"] == 2
    assert seen["num_clients"] is None  # the data decides
    assert seen["overrides"]["label-column"] == "z"
    assert seen["notes"] == ["label-column 'z' from --label-column (scenario: 'y')"]

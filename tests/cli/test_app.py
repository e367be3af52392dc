"""The ``fedge`` entry point: dispatch, help, and user errors as one line + exit 2.

Every ``simulate`` call here must stop in validation: a guard makes starting a
SuperLink or any subprocess fail the test.
"""

import tomllib
from pathlib import Path

import pytest

import fedge.simulations.simulate as simulate_module
from fedge.cli.app import COMMANDS, main

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


@pytest.fixture
def wide_terminal(monkeypatch):
    # argparse wraps help at the terminal width; keep each option on one line.
    monkeypatch.setenv("COLUMNS", "200")


def one_line(text):
    return " ".join(text.split())


# ---------------------------------------------------------------- help
def test_help_lists_the_commands(capsys, wide_terminal):
    with pytest.raises(SystemExit) as excinfo:
        main(["--help"])

    out = capsys.readouterr().out
    assert excinfo.value.code == 0
    assert "usage: fedge" in out
    assert "simulate" in out
    assert "run a federation of virtual clients on this machine" in out


def test_no_command_prints_help_and_succeeds(capsys):
    assert main([]) == 0
    assert "usage: fedge" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["frobnicate"])

    assert excinfo.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_simulate_help_shows_the_defaults(capsys, wide_terminal):
    with pytest.raises(SystemExit) as excinfo:
        main(["simulate", "--help"])

    out = one_line(capsys.readouterr().out)
    assert excinfo.value.code == 0
    assert "usage: fedge simulate" in out
    assert (
        "--clients CLIENTS number of virtual clients (default: the scenario's, else 10)"
        in out
    )
    assert "(default: runs)" in out
    assert "--set KEY=VALUE" in out


def test_simulate_help_defaults_match_pyproject(capsys, wide_terminal):
    # The help text states run-config defaults; they must not drift from pyproject.
    with PYPROJECT.open("rb") as f:
        defaults = tomllib.load(f)["tool"]["flwr"]["app"]["config"]

    with pytest.raises(SystemExit):
        main(["simulate", "--help"])

    out = one_line(capsys.readouterr().out)
    assert f"(default: {defaults['dataset']})" in out
    assert f"(default: {defaults['partitioning']})" in out
    assert f"(default: {defaults['dirichlet-alpha']})" in out
    assert f"(default: {defaults['strategy']})" in out


def test_bad_flag_type_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["simulate", "--rounds", "many"])

    assert excinfo.value.code == 2
    assert "invalid int value: 'many'" in capsys.readouterr().err


# ---------------------------------------------------------------- user errors
def test_unknown_config_key_exits_2_before_anything_starts(
    capsys, monkeypatch, tmp_path, no_flower
):
    preflight_calls = []
    monkeypatch.setattr(
        simulate_module, "preflight", lambda *a, **k: preflight_calls.append(a)
    )
    runs = tmp_path / "runs"

    code = main(
        [
            "simulate",
            "--set",
            "no-such-key=3",
            "--output-dir",
            str(runs),
            "--clients",
            "2",
        ]
    )

    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("fedge simulate: error: ")
    assert "unknown keys ['no-such-key']" in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""
    assert preflight_calls == []  # refused by config validation, before preflight
    assert not runs.exists()  # no run folder either


def test_config_error_is_printed_on_one_line(capsys, tmp_path, no_flower):
    code = main(["simulate", "--set", "no-such-key=3", "--output-dir", str(tmp_path)])

    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1


def test_missing_scenario_exits_2_with_one_line(capsys, tmp_path, no_flower):
    missing = tmp_path / "absent.toml"

    code = main(["simulate", "--scenario", str(missing)])

    err = capsys.readouterr().err
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("fedge simulate: error: scenario ")
    assert str(missing) in line


def test_preflight_error_exits_2_before_anything_starts(capsys, tmp_path, no_flower):
    runs = tmp_path / "runs"

    code = main(
        [
            "simulate",
            "--clients",
            "3",
            "--set",
            "min-nodes=5",
            "--output-dir",
            str(runs),
        ]
    )

    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "fedge simulate: error: 'min-nodes' = 5 exceeds --clients 3; "
        "the run would wait for nodes that never come"
    ]
    assert not runs.exists()


def test_zero_clients_error_names_the_clients_flag(capsys, tmp_path, no_flower):
    code = main(["simulate", "--clients", "0", "--output-dir", str(tmp_path)])

    err = capsys.readouterr().err
    assert code == 2
    assert "--clients must be >= 1, got 0" in err


# ---------------------------------------------------------------- layering
def test_no_package_below_imports_the_cli():
    # The CLI is the top floor: the packages it calls must not import it back.
    import ast

    repo = PYPROJECT.parent
    offenders = []
    for package in (
        "shared",
        "client",
        "server",
        "edge_export",
        "simulations",
        "reports",
    ):
        for path in (repo / package).rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                offenders += [
                    f"{path.relative_to(repo)}: {n}"
                    for n in names
                    if n == "fedge.cli" or n.startswith("fedge.cli.")
                ]
    assert offenders == []


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_its_own_help(name, capsys, wide_terminal):
    with pytest.raises(SystemExit) as excinfo:
        main([name, "--help"])

    assert excinfo.value.code == 0
    assert f"usage: fedge {name}" in capsys.readouterr().out


def test_a_run_that_failed_exits_1_with_one_line(capsys, monkeypatch, tmp_path):
    from fedge.shared.errors import RunFailedError

    def failed_run(*args, **kwargs):
        raise RunFailedError("run did not complete (failed: Only 1 of 2 nodes)")

    monkeypatch.setattr(simulate_module, "simulate", failed_run)

    code = main(["simulate", "--output-dir", str(tmp_path)])

    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines() == [
        "fedge simulate: run failed: run did not complete (failed: Only 1 of 2 nodes)"
    ]


def test_the_fedge_command_exits_with_mains_status_and_spares_the_last_collection(
    monkeypatch,
):
    import tomllib
    from pathlib import Path

    import fedge.cli.app as app

    froze = []
    monkeypatch.setattr(app, "main", lambda: 3)
    monkeypatch.setattr(app.gc, "freeze", lambda: froze.append(True))

    with pytest.raises(SystemExit) as exit_:
        app.run()

    assert exit_.value.code == 3 and froze == [True]
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    scripts = tomllib.loads(pyproject.read_text())["project"]["scripts"]
    assert scripts["fedge"] == "fedge.cli.app:run"

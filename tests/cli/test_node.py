from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from fedge.cli.app import main

REPO = Path(__file__).resolve().parents[2]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_good_file_is_summarised(tmp_path, capsys):
    path = _write(
        tmp_path / "node.csv", "age,city,label\n30,a,yes\n41,b,no\n27,a,yes\n"
    )
    assert main(["node", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 examples" in out
    assert "labels: no=1, yes=2" in out
    assert "ok: this node's data can join" in out


def test_a_bad_value_is_named_with_column_and_row(tmp_path, capsys):
    rows = "\n".join(f"{20 + i},a,{'yes' if i % 2 else 'no'}" for i in range(12))
    path = _write(tmp_path / "node.csv", "age,city,label\n" + rows + "\nabc,b,no\n")
    assert main(["node", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "non-numeric value 'abc' in numeric column 'age'" in err
    assert "data row 13" in err


def test_the_federation_preprocessing_catches_missing_columns(tmp_path, capsys):
    reference = _write(tmp_path / "eval.csv", "age,city,label\n30,a,yes\n41,b,no\n")
    node = _write(tmp_path / "node.csv", "age,label\n30,yes\n41,no\n")
    assert main(["node", "check", str(node), "--reference", str(reference)]) == 2
    assert "city" in capsys.readouterr().err


def test_an_unknown_label_is_refused_against_the_reference(tmp_path, capsys):
    reference = _write(tmp_path / "eval.csv", "age,city,label\n30,a,yes\n41,b,no\n")
    node = _write(tmp_path / "node.csv", "age,city,label\n30,a,maybe\n")
    assert main(["node", "check", str(node), "--reference", str(reference)]) == 2
    assert "maybe" in capsys.readouterr().err


# ---------------------------------------------------------------- node start
START_ENV = (
    "FEDGE_SUPERLINK",
    "FEDGE_NODE_KEY",
    "FEDGE_CA_CERT",
    "FEDGE_DATA_PATH",
    "FEDGE_STATE_DIR",
    "FEDGE_NODE_CONFIG",
    "FEDGE_NODE_PORT",
)


@pytest.fixture
def node_files(tmp_path, monkeypatch):
    for variable in START_ENV:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)
    key = _write(tmp_path / "clinic-a", "private key")
    ca = _write(tmp_path / "ca.crt", "certificate")
    data = _write(tmp_path / "clinic a.csv", "x,label\n1,a\n")
    return key, ca, data


def test_start_dry_run_prints_the_flower_supernode_command(node_files, capsys):
    key, ca, data = node_files

    code = main(
        [
            "node",
            "start",
            "--dry-run",
            "--superlink",
            "coord.example:9100",
            "--node-key",
            "clinic-a",  # relative: made absolute
            "--ca-cert",
            str(ca),
            "--data-path",
            str(data),
            "--state-dir",
            "state",
            "--port",
            "9201",
            "--",
            "--max-retries",
            "3",
        ]
    )

    out = capsys.readouterr().out
    assert code == 0
    assert shlex.split(out) == [
        "flower-supernode",
        "--root-certificates",
        str(ca),
        "--superlink",
        "coord.example:9100",
        "--auth-supernode-private-key",
        str(key),
        "--port",
        "9201",
        "--node-config",
        f'data-path="{data}" state-dir="{key.parent / "state"}"',
        "--max-retries",
        "3",
    ]


def test_start_reads_the_environment_and_flags_win(node_files, capsys, monkeypatch):
    key, ca, _ = node_files
    monkeypatch.setenv("FEDGE_SUPERLINK", "from-env:1")
    monkeypatch.setenv("FEDGE_NODE_KEY", str(key))
    monkeypatch.setenv("FEDGE_CA_CERT", str(ca))
    monkeypatch.setenv("FEDGE_NODE_CONFIG", "partition-id=0 num-partitions=2")

    code = main(["node", "start", "--dry-run", "--superlink", "from-flag:2"])

    command = shlex.split(capsys.readouterr().out)
    assert code == 0
    assert command[command.index("--superlink") + 1] == "from-flag:2"
    assert command[command.index("--port") + 1] == "9094"  # the default
    assert command[command.index("--node-config") + 1] == (
        f'state-dir="{key.parent / "fedge-state"}" partition-id=0 num-partitions=2'
    )


def test_start_names_every_missing_setting_on_one_line(node_files, capsys):
    code = main(["node", "start", "--data-path", "absent.csv"])

    err = capsys.readouterr().err
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line == (
        "fedge node start: error: "
        "set --superlink (FEDGE_SUPERLINK) to the coordinator's HOST:PORT; "
        "set --node-key (FEDGE_NODE_KEY) to this node's private key "
        "(make-node-key.sh); "
        "cannot read CA certificate ./certs/ca.crt given by --ca-cert "
        "(FEDGE_CA_CERT); copy the coordinator's ca.crt; "
        "cannot read data file absent.csv given by --data-path (FEDGE_DATA_PATH)"
    )


def test_start_refuses_a_port_that_is_not_a_number(node_files):
    key, ca, _ = node_files
    from fedge.client.supernode_launch import node_launch
    from fedge.shared.errors import FedgeError

    with pytest.raises(
        FedgeError, match=r"--port \(FEDGE_NODE_PORT\) must be a port number, got 'x'"
    ):
        node_launch(
            {"superlink": "h:1", "node-key": str(key), "ca-cert": str(ca), "port": "x"},
            environ={},
        )


def test_the_deploy_launcher_runs_the_same_command(node_files):
    # deploy/supernode.sh is a wrapper: the same settings give the same command.
    key, ca, data = node_files
    env = {
        "PATH": "/usr/bin:/bin",
        "FEDGE_SUPERLINK": "h:1",
        "FEDGE_NODE_KEY": str(key),
        "FEDGE_CA_CERT": str(ca),
        "FEDGE_DATA_PATH": str(data),
    }

    done = subprocess.run(
        [str(REPO / "deploy" / "supernode.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    command = shlex.split(done.stdout)
    assert command[0] == "flower-supernode"
    assert command[command.index("--node-config") + 1] == (
        f'data-path="{data}" state-dir="{key.parent / "fedge-state"}"'
    )


# ------------------------------------------------ node start: SuperExec polling
POLL = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"


@pytest.fixture
def exec_calls(node_files, monkeypatch):
    """Run `fedge node start` up to its exec, recording what it would exec."""
    import fedge.cli.node

    calls = []
    monkeypatch.setattr(
        fedge.cli.node.os,
        "execve",
        lambda program, argv, env: calls.append((program, argv, env)),
    )
    monkeypatch.delenv(POLL, raising=False)
    key, ca, _ = node_files
    flags = ["--superlink", "h:1", "--node-key", str(key), "--ca-cert", str(ca)]
    return calls, flags


def test_start_sets_the_superexec_poll_interval_by_default(exec_calls, monkeypatch):
    calls, flags = exec_calls
    monkeypatch.setenv("FEDGE_TEST_KEPT", "yes")

    assert main(["node", "start", *flags]) == 0

    ((program, argv, env),) = calls
    assert program.endswith("flower-supernode")
    assert argv[1:3] == ["--root-certificates", flags[-1]]
    assert env[POLL] == "0.2"  # the default the README's benchmark chose
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env["FEDGE_TEST_KEPT"] == "yes"  # the rest of the environment goes on


def test_an_operators_own_poll_interval_wins(exec_calls, monkeypatch):
    calls, flags = exec_calls
    monkeypatch.setenv(POLL, "2.5")
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "1")

    assert main(["node", "start", *flags]) == 0

    ((_, _, env),) = calls
    assert env[POLL] == "2.5"
    assert env["FLWR_TELEMETRY_ENABLED"] == "1"


def test_start_help_names_the_poll_interval_and_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["node", "start", "--help"])

    out = " ".join(capsys.readouterr().out.split())
    assert exit_info.value.code == 0
    assert "every 0.2 s (FLWR_SUPEREXEC_TASK_POLL_INTERVAL" in out
    assert "unless that variable is already set" in out

"""The operator's secure deployment, run for real on loopback: certificates and
node keys from deploy/make-*.sh, a TLS SuperLink with SuperNode authentication
and two registered SuperNodes started by deploy/superlink.sh and supernode.sh,
sample-level DP over two rounds, and nodes that were never registered refused.

The deploy scripts' own checks (refusing to overwrite keys, missing settings)
are fast tests here too; only the full deployment is marked e2e and slow."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from opacus.accountants import RDPAccountant

from tests.e2e.deployment import (
    DEPLOY,
    Node,
    TlsFiles,
    make_node_key,
    register_supernode,
    running_keyless_node,
    running_node,
    running_superlink,
    submit_run,
    supernode_states,
)

BATCH_SIZE = 32


def _run_deploy_script(
    name: str, *args: Path | str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DEPLOY / name), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def _deploy_script(name: str, *args: Path | str) -> str:
    done = _run_deploy_script(name, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_certs_names_every_host_and_chains_to_the_ca(tmp_path: Path) -> None:
    certs = tmp_path / "certs"

    printed = _deploy_script("make-certs.sh", certs, "10.0.0.5", "coord.example")

    # openssl itself, not our script, reads the certificate back.
    def openssl(*args: str) -> str:
        return subprocess.run(
            ["openssl", *args], capture_output=True, text=True, check=True
        ).stdout

    san = openssl(
        "x509", "-in", str(certs / "server.pem"), "-noout", "-ext", "subjectAltName"
    )
    assert "IP Address:10.0.0.5" in san
    assert "DNS:coord.example" in san
    verified = openssl(
        "verify", "-CAfile", str(certs / "ca.crt"), str(certs / "server.pem")
    )
    assert verified.strip().endswith(": OK")
    for key in ("ca.key", "server.key"):
        assert (certs / key).stat().st_mode & 0o777 == 0o600, key
    assert "ca.crt" in printed
    assert "only on the coordinator" in printed.lower()


def test_make_certs_refuses_to_overwrite_keys(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "server.key").write_text("the coordinator's key")

    done = _run_deploy_script("make-certs.sh", certs)

    assert done.returncode == 1
    assert "server.key exists; refusing to overwrite it" in done.stderr
    assert (certs / "server.key").read_text() == "the coordinator's key"
    assert not (certs / "ca.key").exists()


def test_make_node_key_makes_an_ecdsa_384_pair_once(tmp_path: Path) -> None:
    _deploy_script("make-node-key.sh", tmp_path, "clinic-a")
    fingerprint = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(tmp_path / "clinic-a.pub")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert fingerprint.startswith("384 ") and "(ECDSA)" in fingerprint
    before = (tmp_path / "clinic-a").read_bytes()

    again = _run_deploy_script("make-node-key.sh", tmp_path, "clinic-a")

    assert again.returncode == 1
    assert "clinic-a exists; refusing to overwrite it" in again.stderr
    assert (tmp_path / "clinic-a").read_bytes() == before


def test_make_node_key_refuses_a_name_that_is_not_a_file_name(tmp_path: Path) -> None:
    done = _run_deploy_script("make-node-key.sh", tmp_path, "../escape")

    assert done.returncode == 2
    assert "NAME must be letters, digits" in done.stderr
    assert "got '../escape'" in done.stderr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "set --superlink (FEDGE_SUPERLINK) to the coordinator's HOST:PORT"),
        ({"FEDGE_SUPERLINK": "h:1"}, "set --node-key (FEDGE_NODE_KEY)"),
        (
            {"FEDGE_SUPERLINK": "h:1", "FEDGE_NODE_KEY": "/nope"},
            "cannot read node key /nope given by --node-key (FEDGE_NODE_KEY)",
        ),
    ],
)
def test_supernode_launcher_names_a_missing_setting(
    tmp_path: Path, settings: dict[str, str], message: str
) -> None:
    env = {"PATH": "/usr/bin:/bin", **settings}

    done = _run_deploy_script("supernode.sh", env=env)

    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("fedge node start: error: ")
    assert message in line


def test_superlink_launcher_names_a_missing_certificate(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "FEDGE_CERT_DIR": str(tmp_path)}

    done = _run_deploy_script("superlink.sh", env=env)

    assert done.returncode == 2
    assert f"cannot read {tmp_path}/ca.crt" in done.stderr


def _rdp_epsilon(ledger: dict, delta: float) -> float:
    """ε of a ledger's rounds, from Opacus's RDP accountant directly."""
    accountant = RDPAccountant()
    accountant.history = list(
        zip(
            ledger["noise-multipliers"],
            ledger["sample-rates"],
            ledger["steps"],
            strict=True,
        )
    )
    return accountant.get_epsilon(delta)


@pytest.mark.e2e
@pytest.mark.slow
def test_registered_nodes_train_over_tls_and_strangers_are_refused(
    tmp_path: Path,
) -> None:
    # Prepare: the operator's files, made by the operator's scripts.
    certs, keys = tmp_path / "certs", tmp_path / "keys"
    tls = TlsFiles.make(certs)
    for name in ("node0", "node1", "stranger"):
        make_node_key(keys, name)
    state_dirs = [tmp_path / "state0", tmp_path / "state1"]
    out_dir = tmp_path / "runs"
    overrides = {
        "num-server-rounds": 2,
        "dp-mode": "sample",
        "noise-multiplier": 0.0,  # calibrated to target-epsilon over both rounds
        "target-epsilon": 8.0,
        "local-epochs": 1,
        "batch-size": BATCH_SIZE,
        "min-nodes": 2,
        "output-dir": str(out_dir),
        "run-name": "secure",
        "node-wait-timeout-s": 60.0,
        "round-timeout-s": 120.0,
    }

    nodes = [
        Node(
            name=f"node{i}",
            key=(keys / f"node{i}").resolve(),
            state_dir=state_dirs[i],
            node_config={"partition-id": i, "num-partitions": 2},
        )
        for i in range(2)
    ]
    stranger = Node(
        name="stranger",
        key=(keys / "stranger").resolve(),
        state_dir=tmp_path / "stranger-state",
        node_config={"partition-id": 0, "num-partitions": 2},
    )

    # Execute
    with running_superlink(tmp_path, tls=tls, launcher=True) as link:
        registered = {
            register_supernode(link, n.key.with_suffix(".pub")) for n in nodes
        }
        with (
            running_node(link, tmp_path, nodes[0], launcher=True),
            running_node(link, tmp_path, nodes[1], launcher=True),
            # A key the coordinator never registered, via the same launcher ...
            running_node(link, tmp_path, stranger, launcher=True) as refused,
            # ... and a node that brings no key at all.
            running_keyless_node(
                link,
                tmp_path,
                name="keyless",
                node_config={"partition-id": 1, "num-partitions": 2},
                tls=True,
            ) as keyless,
        ):
            done = submit_run(link, tmp_path, overrides, timeout_s=300)
            refused_codes = (refused.wait(timeout=60), keyless.wait(timeout=60))
            listed = supernode_states(link)

    # Assert: the run completed with both registered nodes in every round.
    log = done.stdout + done.stderr
    run_dir = out_dir / "secure"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "complete", log[-3000:]
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert list(metrics["round"]) == [0, 1, 2]
    assert list(metrics["replies"].iloc[1:]) == [2, 2]
    eps_round1, eps_round2 = metrics["epsilon-max"].iloc[1:]
    assert 0 < eps_round1 < eps_round2 <= 8.0 + 1e-6

    # Only registered nodes ever replied, and the SuperLink knows no others.
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    for row in rounds[1:]:
        assert {c["node-id"] for c in row["clients"]} == registered, row["round"]
    assert set(listed) == registered

    # Each node's ledger file on disk holds its two rounds, and Opacus's RDP
    # accountant on those entries gives the ε the node reported after round 2.
    reported = rounds[2]["clients"]
    ledger_eps = []
    for state_dir in state_dirs:
        (ledger_file,) = state_dir.glob("privacy-ledger-*.json")
        ledger = json.loads(ledger_file.read_text())
        assert ledger["server-rounds"] == [1, 2]
        ledger_eps.append(_rdp_epsilon(ledger, reported[0]["delta"]))
    for client in reported:
        n = client["num-examples"]
        # Poisson sampling at batch/n, ⌈n/batch⌉ steps per epoch, δ = 10^k ≤ 1/(10 n).
        assert client["sample-rate"] == pytest.approx(BATCH_SIZE / n)
        assert client["dp-steps"] == 2 * math.ceil(n / BATCH_SIZE)
        assert client["delta"] == 10.0 ** math.floor(math.log10(1 / (10 * n)))
    assert sorted(ledger_eps) == pytest.approx(
        sorted(c["epsilon"] for c in reported), rel=1e-6
    )
    assert max(ledger_eps) == pytest.approx(eps_round2, rel=1e-6)

    # Nodes without a registered key exit at once, saying why.
    assert all(code != 0 for code in refused_codes), refused_codes
    stranger_log = (tmp_path / "stranger.log").read_text()
    assert "Failed to activate SuperNode" in stranger_log
    assert "No SuperNode found with the given public key" in (link.log_path.read_text())
    keyless_log = (tmp_path / "keyless.log").read_text()
    assert (
        "SuperNode authentication is enabled. "
        "All SuperNodes must be registered via the CLI."
    ) in keyless_log
    assert not list((tmp_path / "stranger-state").glob("privacy-ledger-*"))

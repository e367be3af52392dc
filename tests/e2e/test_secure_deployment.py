"""The operator's secure deployment, run for real on loopback: certificates and
node keys from deploy/make-*.sh, a TLS SuperLink with SuperNode authentication
(deploy/superlink.sh), nodes on their own CSV files started by
deploy/supernode.sh (fedge node start), sample-level DP over two rounds, then
status, export and prediction on the device runtime; and nodes dialling in
plaintext, trusting another CA, never registered or without a key, refused.

The deploy scripts' own checks (refusing to overwrite keys, missing settings)
are fast tests here too; only the full deployment is marked e2e and slow."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

from fedge.shared.config import from_run_config
from fedge.shared.privacy_plan import plan_for_config
from tests.e2e.deployment import (
    APP_DIR,
    DEPLOY,
    DP_ROUND_CONFIG,
    FEDGE,
    Node,
    TlsFiles,
    ledger_epsilon,
    make_node_key,
    register_supernode,
    running_flower_node,
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


def _write_node_csvs(tmp: Path) -> tuple[list[Path], Path]:
    """Digits as tabular CSVs: two nodes' disjoint training files and a test file."""
    digits = load_digits()
    columns = [f"px{i}" for i in range(digits.data.shape[1])]
    frame = pd.DataFrame(digits.data, columns=columns)
    frame["digit"] = digits.target
    order = np.random.default_rng(0).permutation(len(frame))
    # Node sizes whose training n (611 and 647 of 680 and 717 rows) puts
    # n / 32 just above a whole number: the plan's round(1/q) steps per epoch
    # and the ceiling ⌈n/32⌉ then differ, so the step count tells them apart.
    test, node0, node1 = order[:400], order[400:1080], order[1080:]
    paths = []
    for name, rows in (("node0.csv", node0), ("node1.csv", node1), ("eval.csv", test)):
        path = tmp / name
        frame.iloc[rows].to_csv(path, index=False)
        paths.append(path)
    return paths[:2], paths[2]


def _fedge(*args: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FEDGE, *map(str, args)],
        cwd=APP_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.e2e
@pytest.mark.slow
def test_the_readme_flow_while_nodes_in_plaintext_another_ca_or_no_key_are_refused(
    tmp_path: Path,
) -> None:
    # (e) As the README and deploy/README.md tell it: each node checks its own
    # CSV against the coordinator's held-out file, the operator makes the
    # certificates and registers the nodes' keys, the nodes start through
    # deploy/supernode.sh (fedge node start), `flwr run` trains with DP, and then
    # `fedge status`, `fedge export` and a torch-free `fedge predict`.
    node_files, eval_file = _write_node_csvs(tmp_path)
    for path in node_files:
        checked = _fedge(
            "node", "check", path, "--label-column", "digit", "--reference", eval_file
        )
        assert checked.returncode == 0, checked.stderr
        assert "ok: this node's data can join" in checked.stdout
    certs, keys = tmp_path / "certs", tmp_path / "keys"
    tls = TlsFiles.make(certs)
    nodes = [
        Node(
            name=f"node{i}",
            key=make_node_key(keys, f"node{i}"),
            state_dir=tmp_path / f"state{i}",
            data_path=path,
        )
        for i, path in enumerate(node_files)
    ]
    out_dir = tmp_path / "runs"
    overrides = {
        **DP_ROUND_CONFIG,
        "batch-size": BATCH_SIZE,
        "num-server-rounds": 2,
        "dataset": "file",
        "eval-data-path": str(eval_file),
        "label-column": "digit",
        "min-nodes": 2,
        "output-dir": str(out_dir),
        "run-name": "secure",
        "node-wait-timeout-s": 60.0,
        "round-timeout-s": 120.0,
    }

    # (c) Alongside, nodes that must never join: a registered key trusting
    # another CA; a node dialling the TLS port in plaintext (no key: a key
    # without TLS is refused by flower-supernode itself, also checked); a key
    # never registered; and TLS without a key.
    other_ca = TlsFiles.make(tmp_path / "other-ca")
    outsider = Node(
        name="wrong-ca",
        key=make_node_key(keys, "outsider"),
        state_dir=tmp_path / "outsider-state",
        node_config={"partition-id": 0, "num-partitions": 1},
    )
    stranger = Node(
        name="stranger",
        key=make_node_key(keys, "stranger"),
        state_dir=tmp_path / "stranger-state",
        node_config={"partition-id": 0, "num-partitions": 1},
    )
    plain_config = {"partition-id": 0, "num-partitions": 1}

    with running_superlink(tmp_path, tls=tls, launcher=True) as link:
        registered = {register_supernode(link, keys / f"{n.name}.pub") for n in nodes}
        outsider_id = register_supernode(link, keys / "outsider.pub")
        with (
            running_node(link, tmp_path, nodes[0], launcher=True),
            running_node(link, tmp_path, nodes[1], launcher=True),
            running_node(link, tmp_path, outsider, ca_cert=other_ca.ca_cert),
            running_flower_node(
                link,
                tmp_path,
                name="plaintext",
                node_config=plain_config,
                # It keeps dialling while the others join and the run starts,
                # then gives up and names why.
                options=["--max-wait-time", "20"],
            ) as plaintext,
            running_flower_node(
                link,
                tmp_path,
                name="plain-with-key",
                node_config=plain_config,
                key=outsider.key,
            ) as plain_with_key,
            running_node(link, tmp_path, stranger) as unregistered,
            running_flower_node(
                link, tmp_path, name="keyless", node_config=plain_config, tls=True
            ) as keyless,
        ):
            done = submit_run(link, tmp_path, overrides, timeout_s=300)
            refused_codes = (
                plaintext.wait(timeout=60),
                plain_with_key.wait(timeout=60),
                unregistered.wait(timeout=60),
                keyless.wait(timeout=60),
            )
            listed = supernode_states(link)

    # The run completed with both registered nodes in every round.
    log = done.stdout + done.stderr
    run_dir = out_dir / "secure"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "complete", log[-3000:]
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert list(metrics["round"]) == [0, 1, 2]
    assert list(metrics["replies"].iloc[1:]) == [2, 2]
    eps_round1, eps_round2 = metrics["epsilon-max"].iloc[1:]
    assert 0 < eps_round1 < eps_round2 <= 8.0 + 1e-6
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    for row in rounds[1:]:
        assert {c["node-id"] for c in row["clients"]} == registered, row["round"]

    # Each node's ledger file holds its two rounds, and Opacus's RDP accountant
    # on those entries gives the ε the node reported after round 2.
    reported = rounds[2]["clients"]
    ledger_eps = []
    for node in nodes:
        (ledger_file,) = node.state_dir.glob("privacy-ledger-*.json")
        ledger = json.loads(ledger_file.read_text())
        assert ledger["server-rounds"] == [1, 2]
        ledger_eps.append(ledger_epsilon(ledger, reported[0]["delta"]))
    run_config = from_run_config(overrides, fill_defaults=True)
    for client in reported:
        n = client["num-examples"]
        # The plan every node trains by (shared.privacy_plan): Poisson sampling
        # at batch/n, its steps per round, and δ = 10^k ≤ 1/(10 n).
        plan = plan_for_config(config=run_config, num_examples=n)
        assert client["sample-rate"] == pytest.approx(BATCH_SIZE / n)
        assert client["dp-steps"] == 2 * plan.steps_per_round
        assert plan.steps_per_round != math.ceil(n / BATCH_SIZE)  # see the sizes
        assert client["noise-multiplier"] == pytest.approx(plan.noise_multiplier)
        assert client["delta"] == 10.0 ** math.floor(math.log10(1 / (10 * n)))
    assert sorted(ledger_eps) == pytest.approx(
        sorted(c["epsilon"] for c in reported), rel=1e-6
    )
    assert max(ledger_eps) == pytest.approx(eps_round2, rel=1e-6)

    # (c) The outsider's key is registered, yet it never connected ("registered",
    # not "online" or "offline"); the others never made it onto the list.
    assert listed[outsider_id] == "registered", listed
    assert set(listed) == registered | {outsider_id}
    assert (
        "certificate verify failed" in (tmp_path / "wrong-ca.log").read_text().lower()
    )
    assert all(code != 0 for code in refused_codes), refused_codes
    # The plaintext node dialled the TLS port, which hung up on every try until
    # it gave up; no message ever reached it.
    plaintext_log = (tmp_path / "plaintext.log").read_text()
    assert f"Starting insecure channel to {link.address}" in plaintext_log
    assert "Server disconnected without sending a response" in plaintext_log
    assert "Failed to initialize the connection to the SuperLink" in plaintext_log
    assert "train message" not in plaintext_log  # node0.log: "Receiving: train …"
    # A key without TLS: flower-supernode itself refuses to start.
    assert "TLS is not enabled" in (tmp_path / "plain-with-key.log").read_text()
    assert "Failed to activate SuperNode" in (tmp_path / "stranger.log").read_text()
    assert "No SuperNode found with the given public key" in link.log_path.read_text()
    assert (
        "SuperNode authentication is enabled. "
        "All SuperNodes must be registered via the CLI."
    ) in (tmp_path / "keyless.log").read_text()
    for never in (outsider, stranger):
        assert not list(never.state_dir.glob("privacy-ledger-*"))

    # status, export, predict on the device runtime.
    shown = _fedge("status", run_dir)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"{run_dir}: complete, round 2 of 2")
    exported = _fedge("export", run_dir, "--quantize", "none")
    assert exported.returncode == 0, exported.stderr
    predictions = tmp_path / "predictions.csv"
    predicted = _fedge("predict", run_dir, eval_file, "-o", predictions)
    assert predicted.returncode == 0, predicted.stderr
    labels = pd.read_csv(predictions)["label"].astype(int)
    truth = pd.read_csv(eval_file)["digit"]
    device_accuracy = float((labels.to_numpy() == truth.to_numpy()).mean())
    assert device_accuracy == pytest.approx(status["final_accuracy"], abs=0.01)
    assert device_accuracy > 0.5

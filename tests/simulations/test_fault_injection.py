"""Fault injection: the attacks, who misbehaves, the fault app and its wiring.

Expected arrays are computed by hand from tiny inputs; nothing here starts Flower.
"""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity

import fedge.simulations.fault_config as fc
import fedge.simulations.fault_injection as fi
import fedge.simulations.simulate as simulate_module
from fedge.shared.config import from_run_config
from fedge.shared.errors import ConfigError, FedgeError
from fedge.simulations.fault_app import write_fault_app
from fedge.simulations.flwr_stream import line_to_show

GLOBAL = {
    "w": np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32),
    "b": np.array([0.5], dtype=np.float32),
    "steps": np.array([7], dtype=np.int64),
}
LOCAL = {
    "w": np.array([[2.0, 2.0], [1.0, 6.0]], dtype=np.float32),
    "b": np.array([1.5], dtype=np.float32),
    "steps": np.array([9], dtype=np.int64),
}


# ------------------------------------------------------------------ attacks
def test_sign_flip_is_global_minus_k_times_the_update():
    out = fi.sign_flip(GLOBAL, LOCAL, scale=3.0)

    # w - 3 * (l - w): update [[1, 0], [-2, 2]] -> [[1-3, 2-0], [3+6, 4-6]]
    np.testing.assert_array_equal(out["w"], [[-2.0, 2.0], [9.0, -2.0]])
    np.testing.assert_array_equal(out["b"], [0.5 - 3.0])
    assert out["w"].dtype == np.float32
    np.testing.assert_array_equal(out["steps"], [9])  # integer buffer untouched


def test_scale_is_global_plus_k_times_the_update():
    out = fi.scale_update(GLOBAL, LOCAL, scale=3.0)

    np.testing.assert_array_equal(out["w"], [[4.0, 2.0], [-3.0, 10.0]])
    np.testing.assert_array_equal(out["b"], [3.5])
    assert out["b"].dtype == np.float32
    np.testing.assert_array_equal(out["steps"], [9])


def test_sign_flip_with_k_1_mirrors_the_local_model_around_the_global_one():
    out = fi.sign_flip(GLOBAL, LOCAL, scale=1.0)

    np.testing.assert_array_equal(out["w"] + LOCAL["w"], 2 * GLOBAL["w"])


def test_nan_update_makes_every_float_value_nan_and_keeps_shapes():
    out = fi.nan_update(LOCAL)

    for name in ("w", "b"):
        assert out[name].shape == LOCAL[name].shape
        assert out[name].dtype == LOCAL[name].dtype
        assert np.isnan(out[name]).all()
    np.testing.assert_array_equal(out["steps"], [9])


def test_wrong_shape_changes_exactly_one_shape_by_one_row():
    local = {"scalar": np.array(2.0, dtype=np.float32), **LOCAL}

    out = fi.wrong_shape(local)

    assert out["w"].shape == (3, 2)  # first array of rank >= 1
    np.testing.assert_array_equal(out["w"][:2], LOCAL["w"])
    np.testing.assert_array_equal(out["w"][2], [0.0, 0.0])
    changed = [n for n in local if out[n].shape != local[n].shape]
    assert changed == ["w"]
    for name in ("scalar", "b", "steps"):
        np.testing.assert_array_equal(out[name], local[name])


def test_wrong_shape_needs_an_array_with_an_axis():
    with pytest.raises(ValueError, match=r"needs an array of rank >= 1"):
        fi.wrong_shape({"s": np.array(1.0)})


def test_corrupt_dispatches_by_name_and_refuses_unknown_attacks():
    np.testing.assert_array_equal(
        fi.corrupt("sign-flip", GLOBAL, LOCAL, scale=3.0)["b"], [-2.5]
    )
    np.testing.assert_array_equal(
        fi.corrupt("scale", GLOBAL, LOCAL, scale=3.0)["b"], [3.5]
    )
    assert np.isnan(fi.corrupt("nan", GLOBAL, LOCAL, scale=3.0)["b"]).all()
    assert fi.corrupt("wrong-shape", GLOBAL, LOCAL, scale=3.0)["w"].shape == (3, 2)
    np.testing.assert_array_equal(
        fi.corrupt("none", GLOBAL, LOCAL, scale=3.0)["w"], LOCAL["w"]
    )
    with pytest.raises(ConfigError, match=r"'fault-attack' must be one of .*'flip'"):
        fi.corrupt("flip", GLOBAL, LOCAL, scale=3.0)


# ------------------------------------------------------------ who misbehaves
@pytest.mark.parametrize("seed", [0, 1, 7, 123])
@pytest.mark.parametrize(
    ("num_partitions", "count"), [(10, 0), (10, 2), (10, 10), (3, 1)]
)
def test_attacker_choice_has_the_exact_count_and_is_deterministic(
    seed, num_partitions, count
):
    chosen = fc.choose_attackers(num_partitions, count, seed=seed)

    assert len(chosen) == count
    assert chosen <= set(range(num_partitions))
    assert chosen == fc.choose_attackers(num_partitions, count, seed=seed)


@pytest.mark.parametrize("seed", [0, 5, 99])
def test_more_attackers_keep_the_earlier_ones(seed):
    sets = [fc.choose_attackers(10, k, seed=seed) for k in range(11)]

    assert all(a < b for a, b in itertools.pairwise(sets))


def test_attacker_choice_depends_on_the_seed():
    chosen = {fc.choose_attackers(10, 2, seed=s) for s in range(20)}

    assert len(chosen) > 5  # 45 possible pairs; a fixed choice would give 1


def test_more_attackers_than_partitions_is_refused():
    with pytest.raises(
        ConfigError,
        match=r"'fault-attackers' must be in \[0, 3\] for 3 partitions, got 4",
    ):
        fc.choose_attackers(3, 4, seed=0)


def test_dropout_decision_is_deterministic_per_seed_round_and_partition():
    args = {"seed": 3, "server_round": 4, "partition_id": 2, "rate": 0.5}

    assert len({fc.drops_out(**args) for _ in range(5)}) == 1
    # Each of the three inputs changes the draw somewhere.
    for key, values in (
        ("seed", range(40)),
        ("server_round", range(1, 41)),
        ("partition_id", range(40)),
    ):
        assert len({fc.drops_out(**{**args, key: v}) for v in values}) == 2


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rate", [0.1, 0.3, 0.7])
def test_dropout_rate_matches_p_over_many_draws(seed, rate):
    draws = [
        fc.drops_out(seed=seed, server_round=r, partition_id=p, rate=rate)
        for r in range(1, 101)
        for p in range(100)
    ]

    # 10 000 draws: the binomial standard deviation is <= 0.005.
    assert np.mean(draws) == pytest.approx(rate, abs=0.025)


def test_rate_zero_never_drops():
    assert not any(
        fc.drops_out(seed=0, server_round=r, partition_id=p, rate=0.0)
        for r in range(50)
        for p in range(50)
    )


# -------------------------------------------------------------- fault config
def test_fault_config_defaults_are_inactive():
    faults = fc.fault_config({})

    assert faults == fc.FaultConfig()
    assert faults.to_run_config() == fc.FAULT_DEFAULTS
    assert not faults.active


@pytest.mark.parametrize(
    ("values", "active"),
    [
        ({"fault-attack": "nan", "fault-attackers": 1}, True),
        ({"fault-attack": "nan", "fault-attackers": 0}, False),
        ({"fault-attack": "none", "fault-attackers": 3}, False),
        ({"fault-dropout": 0.2}, True),
        ({"fault-wipe-state": "0@2"}, True),
    ],
)
def test_fault_config_is_active_only_when_someone_misbehaves(values, active):
    assert fc.fault_config(values).active is active


def test_fault_config_round_trips_through_run_config_keys():
    values = {
        "fault-attack": "scale",
        "fault-attackers": 2,
        "fault-scale": 4.0,
        "fault-dropout": 0.25,
        "fault-seed": 9,
        "fault-wipe-state": "1@2,3@4",
    }

    assert fc.fault_config(values).to_run_config() == values


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"fault-attackers": 2.5}, r"'fault-attackers' must be int, got 2\.5"),
        ({"fault-scale": "big"}, r"'fault-scale' must be float, got 'big'"),
        ({"fault-dropout": True}, r"'fault-dropout' must be float, got True"),
        ({"fault-seed": "x"}, r"'fault-seed' must be int, got 'x'"),
        ({"fault-attack": 1}, r"'fault-attack' must be str, got 1"),
        ({"fault-attack": "flip"}, r"'fault-attack' must be one of \[.*\], got 'flip'"),
        ({"fault-attackers": -1}, r"'fault-attackers' must be >= 0, got -1"),
        ({"fault-scale": 0}, r"'fault-scale' must be > 0, got 0"),
        ({"fault-dropout": 1.0}, r"'fault-dropout' must be in \[0, 1\), got 1\.0"),
        ({"fault-dropout": -0.1}, r"'fault-dropout' must be in \[0, 1\), got -0\.1"),
        ({"fault-seed": -2}, r"'fault-seed' must be >= 0, got -2"),
        ({"fault-atack": "nan"}, r"unknown fault keys \['fault-atack'\]"),
        (
            {"fault-wipe-state": 3},
            r"'fault-wipe-state' must be str PARTITION@ROUND\[,\.\.\.\] such as '3@2', "
            r"got 3 \(default ''\)",
        ),
        (
            {"fault-wipe-state": "3"},
            r"'fault-wipe-state' item '3' must be PARTITION@ROUND \(e\.g\. '3@2'",
        ),
        (
            {"fault-wipe-state": "1@2,x@3"},
            r"'fault-wipe-state' item 'x@3' must be PARTITION@ROUND",
        ),
        (
            {"fault-wipe-state": "-1@2"},
            r"'fault-wipe-state' item '-1@2' must be PARTITION@ROUND",
        ),
        (
            {"fault-wipe-state": "2@0"},
            r"'fault-wipe-state' item '2@0': rounds start at 1, got 0",
        ),
    ],
)
def test_fault_config_reports_each_problem(values, message):
    with pytest.raises(ConfigError, match=message):
        fc.fault_config(values)


def test_fault_config_refuses_more_attackers_than_clients():
    with pytest.raises(
        ConfigError, match=r"'fault-attackers' = 4 exceeds the 3 clients"
    ):
        fc.fault_config({"fault-attack": "nan", "fault-attackers": 4}, num_clients=3)


def test_wipe_state_lists_every_pair_once_in_order():
    faults = fc.fault_config({"fault-wipe-state": " 5@3, 0@2,5@3 "})

    assert faults.wipe_state == ((0, 2), (5, 3))
    assert faults.wipes(5, 3) and faults.wipes(0, 2)
    assert not faults.wipes(5, 2) and not faults.wipes(3, 5)
    assert fc.fault_config({"fault-wipe-state": ""}).wipe_state == ()


def test_wipe_state_of_a_partition_that_does_not_exist_is_refused():
    with pytest.raises(
        ConfigError,
        match=r"'fault-wipe-state' item '3@2': partition 3 does not exist with 3 "
        r"clients \(0 to 2\)",
    ):
        fc.fault_config({"fault-wipe-state": "0@1,3@2"}, num_clients=3)


def test_fault_config_reports_all_problems_at_once():
    with pytest.raises(ConfigError) as excinfo:
        fc.fault_config({"fault-scale": -1.0, "fault-dropout": 2.0, "fault-seed": -1})

    assert str(excinfo.value).count("\n  - ") == 3


def test_split_fault_keys_separates_by_prefix():
    rest, faults = fc.split_fault_keys(
        {"strategy": "krum", "fault-seed": 1, "num-malicious-nodes": 2}
    )

    assert rest == {"strategy": "krum", "num-malicious-nodes": 2}
    assert faults == {"fault-seed": 1}


# ---------------------------------------------------- the fault ClientApp
@pytest.fixture
def task_identity(monkeypatch):
    """Flower stamps run/node/task ids on every Message it builds."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


class FakeProductionApp:
    """Stands in for ``fedge.client.client_app.app``: replies with global + 1."""

    def __init__(self):
        self.run_configs = []

    def __call__(self, msg, context):
        self.run_configs.append(dict(context.run_config))
        context.state["seen"] = MetricRecord({"calls": len(self.run_configs)})
        arrays = {n: a.numpy() + 1 for n, a in msg.content["arrays"].items()}
        content = RecordDict(
            {
                "arrays": ArrayRecord({n: Array(a) for n, a in arrays.items()}),
                "metrics": MetricRecord({"num-examples": 5}),
            }
        )
        return Message(content, reply_to=msg)


@pytest.fixture
def production(monkeypatch):
    import fedge.client.client_app

    fake = FakeProductionApp()
    monkeypatch.setattr(fedge.client.client_app, "app", fake)
    return fake


def train_message(server_round=1, message_type="train"):
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.zeros((2, 2), dtype=np.float32))}),
            "config": ConfigRecord({"server-round": server_round}),
        }
    )
    return Message(content, dst_node_id=11, message_type=message_type)


def node_context(partition_id, faults, num_partitions=4):
    run_config = {"local-epochs": 1, **fc.FAULT_DEFAULTS, **faults}
    return Context(
        run_id=1,
        node_id=11,
        node_config={"partition-id": partition_id, "num-partitions": num_partitions},
        state=RecordDict(),
        run_config=run_config,
    )


def test_attacker_replies_are_corrupted_and_honest_ones_pass(task_identity, production):
    faults = {"fault-attack": "sign-flip", "fault-attackers": 1, "fault-scale": 2.0}
    (attacker,) = fc.choose_attackers(4, 1, seed=0)
    honest = (attacker + 1) % 4

    bad = fi.train(train_message(), node_context(attacker, faults))
    good = fi.train(train_message(), node_context(honest, faults))

    # global 0, local 1: 0 - 2 * (1 - 0) = -2
    np.testing.assert_array_equal(
        bad.content["arrays"]["w"].numpy(), np.full((2, 2), -2.0)
    )
    assert bad.content["metrics"]["num-examples"] == 5  # metrics kept
    np.testing.assert_array_equal(good.content["arrays"]["w"].numpy(), np.ones((2, 2)))


def test_production_app_never_sees_fault_keys(task_identity, production):
    context = node_context(0, {"fault-dropout": 0.0})

    fi.train(train_message(), context)
    fi.evaluate(train_message(), context)

    assert production.run_configs == [{"local-epochs": 1}, {"local-epochs": 1}]
    assert context.run_config["fault-seed"] == 0  # the node's own context intact
    assert context.state["seen"]["calls"] == 2  # state written by the app kept


def test_dropped_node_raises_before_training(task_identity, production):
    faults = {"fault-dropout": 0.5, "fault-seed": 0}
    dropped = next(
        p
        for p in range(4)
        if fc.drops_out(seed=0, server_round=3, partition_id=p, rate=0.5)
    )

    with pytest.raises(
        RuntimeError,
        match=rf"simulated dropout: partition {dropped} fails in round 3 "
        r"\(fault-dropout = 0\.5\)",
    ):
        fi.train(train_message(server_round=3), node_context(dropped, faults))
    assert production.run_configs == []


class StateReadingApp(FakeProductionApp):
    """Records what state the node still had when the message reached it."""

    def __init__(self, state_dir: Path):
        super().__init__()
        self.state_dir = state_dir
        self.seen: list[tuple[list[str], list[str]]] = []

    def __call__(self, msg, context):
        files = sorted(p.name for p in self.state_dir.rglob("*") if p.is_file())
        self.seen.append((sorted(context.state.keys()), files))
        return super().__call__(msg, context)


def test_a_wiped_node_loses_its_state_folder_and_context_state_before_training(
    task_identity, monkeypatch, tmp_path
):
    import fedge.client.client_app

    state_dir = tmp_path / "node-state"
    production = StateReadingApp(state_dir)
    monkeypatch.setattr(fedge.client.client_app, "app", production)
    run_config = {
        **from_run_config(
            {"node-state-dir": str(state_dir)}, fill_defaults=True
        ).to_flat(),
        **fc.FAULT_DEFAULTS,
        "fault-wipe-state": "2@3",
    }

    def context(partition_id: int) -> Context:
        return Context(
            run_id=1,
            node_id=11,
            node_config={"partition-id": partition_id, "num-partitions": 4},
            state=RecordDict(),
            run_config=run_config,
        )

    victim, other = context(2), context(1)
    for node, partition_id in ((victim, 2), (other, 1)):
        folder = state_dir / f"partition-{partition_id}-4"
        folder.mkdir(parents=True)
        (folder / "privacy-ledger-r.json").write_text("{}")
        node.state["privacy-ledger"] = ConfigRecord({"server-rounds": [1, 2]})

    fi.train(train_message(server_round=2), victim)  # not yet
    fi.evaluate(train_message(3, "evaluate"), victim)  # evaluation: never
    fi.train(train_message(server_round=3), other)  # another partition
    fi.train(train_message(server_round=3), victim)

    assert production.seen[:3] == [
        (["privacy-ledger"], ["privacy-ledger-r.json"] * 2),
        (["privacy-ledger", "seen"], ["privacy-ledger-r.json"] * 2),
        (["privacy-ledger"], ["privacy-ledger-r.json"] * 2),
    ]
    # Round 3's training found the victim with nothing: no file, no state.
    assert production.seen[3] == ([], ["privacy-ledger-r.json"])
    assert not (state_dir / "partition-2-4").exists()
    assert (state_dir / "partition-1-4" / "privacy-ledger-r.json").is_file()
    assert sorted(other.state.keys()) == ["privacy-ledger", "seen"]
    assert sorted(victim.state.keys()) == ["seen"]  # what the app wrote since


# ---------------------------------------------------------- the app copy
def make_app_dir(root: Path) -> Path:
    app = root / "app"
    for package in ("server", "client", "shared_x", "other"):
        (app / package).mkdir(parents=True)
        (app / package / "__init__.py").write_text("")
    (app / "client" / "__pycache__").mkdir()
    (app / "client" / "__pycache__" / "x.pyc").write_bytes(b"0")
    for junk in (".venv", "runs", ".git"):
        (app / junk).mkdir()
        (app / junk / "big.bin").write_bytes(b"0" * 10)
    (app / "README.md").write_text("readme")
    (app / "pyproject.toml").write_text(
        """
[project]
name = "x"
version = "0.1"

[tool.setuptools.packages.find]
include = ["server*", "client*", "shared*"]

[tool.flwr.app]
publisher = "fedge"

[tool.flwr.app.components]
serverapp = "fedge.server.server_app:app"
clientapp = "fedge.client.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 5  # a comment
strategy = "fedavg"
"""
    )
    return app


def test_fault_app_copy_has_the_fault_components_and_keys(tmp_path):
    app = make_app_dir(tmp_path)
    original = (app / "pyproject.toml").read_text()
    faults = fc.fault_config({"fault-attack": "nan", "fault-attackers": 2})

    dest = write_fault_app(app, tmp_path / "copy", faults)

    names = sorted(p.name for p in dest.iterdir())
    assert names == ["README.md", "client", "pyproject.toml", "server", "shared_x"]
    assert not (dest / "client" / "__pycache__").exists()
    pyproject = tomllib.loads((dest / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "fedge.simulations.fault_injection:server_app",
        "clientapp": "fedge.simulations.fault_injection:app",
    }
    assert pyproject["tool"]["flwr"]["app"]["config"] == {
        "num-server-rounds": 5,
        "strategy": "fedavg",
        **faults.to_run_config(),
    }
    assert (app / "pyproject.toml").read_text() == original


def test_fault_app_copy_of_the_real_project_declares_every_key(tmp_path):
    faults = fc.fault_config({"fault-dropout": 0.1})

    dest = write_fault_app(simulate_module.APP_DIR, tmp_path / "copy", faults)

    config = tomllib.loads((dest / "pyproject.toml").read_text())["tool"]["flwr"][
        "app"
    ]["config"]
    rest, fault_keys = fc.split_fault_keys(config)
    from_run_config(rest)  # every production key present and valid
    assert fault_keys == faults.to_run_config()
    # One package, copied as the wheel installs it: real folders, not links.
    assert (dest / "fedge" / "simulations" / "fault_injection.py").is_file()
    assert not (dest / "fedge" / "simulations").is_symlink()
    assert sorted(p.name for p in dest.iterdir() if p.is_dir()) == ["fedge"]


def test_fault_app_needs_a_pyproject(tmp_path):
    with pytest.raises(FedgeError, match=r"no .*pyproject\.toml"):
        write_fault_app(tmp_path, tmp_path / "copy", fc.FaultConfig())


def test_fault_app_needs_packages(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.flwr.app]\n")

    with pytest.raises(FedgeError, match=r"no packages found in"):
        write_fault_app(tmp_path, tmp_path / "copy", fc.FaultConfig())


# ------------------------------------------------- simulate() wiring
class Submitted(Exception):
    """Raised by the fake stream: the run would start here."""


@pytest.fixture
def captured_submission(monkeypatch, stand_in_engines):
    """Run simulate() up to the `flwr run` call and capture what it submits."""
    import contextlib
    from types import SimpleNamespace

    seen = {}

    @contextlib.contextmanager
    def fake_superlink(workdir, engine, ray_address, own_engine):
        yield SimpleNamespace(env={}), True

    def fake_stream(command, env, log_path, *, cwd, verbose, echo, stop_when=None):
        app_dir = Path(command[2])
        seen["app_pyproject"] = tomllib.loads((app_dir / "pyproject.toml").read_text())
        seen["run_config"] = tomllib.loads(
            Path(command[command.index("--run-config") + 1]).read_text()
        )
        raise Submitted

    monkeypatch.setattr(simulate_module, "superlink_for_run", fake_superlink)
    monkeypatch.setattr(simulate_module, "stream_flwr_run", fake_stream)
    monkeypatch.setattr(simulate_module, "preflight", lambda *a, **k: None)
    return seen


def test_simulate_submits_the_fault_app_with_the_fault_keys(
    tmp_path, captured_submission
):
    with pytest.raises(Submitted):
        simulate_module.simulate(
            {
                "strategy": "fedmedian",
                "fault-attack": "sign-flip",
                "fault-attackers": 2,
            },
            num_clients=10,
            output_dir=tmp_path,
            run_name="r",
            echo=lambda *_: None,
        )

    components = captured_submission["app_pyproject"]["tool"]["flwr"]["app"][
        "components"
    ]
    assert components["clientapp"] == "fedge.simulations.fault_injection:app"
    run_config = captured_submission["run_config"]
    assert run_config["strategy"] == "fedmedian"
    assert run_config["fault-attack"] == "sign-flip"
    assert run_config["fault-attackers"] == 2
    assert (tmp_path / "r" / "faults.json").is_file()


def test_simulate_without_faults_submits_the_production_app(
    tmp_path, captured_submission
):
    with pytest.raises(Submitted):
        simulate_module.simulate(
            {"fault-dropout": 0.0},
            num_clients=3,
            output_dir=tmp_path,
            run_name="r",
            echo=lambda *_: None,
        )

    components = captured_submission["app_pyproject"]["tool"]["flwr"]["app"][
        "components"
    ]
    assert components["clientapp"] == "fedge.client.client_app:app"
    assert not any(k.startswith("fault-") for k in captured_submission["run_config"])
    assert not (tmp_path / "r" / "faults.json").exists()


def test_simulate_refuses_bad_fault_keys_before_anything_starts(
    tmp_path, captured_submission
):
    with pytest.raises(
        ConfigError, match=r"'fault-attackers' = 5 exceeds the 3 clients"
    ):
        simulate_module.simulate(
            {"fault-attack": "nan", "fault-attackers": 5},
            num_clients=3,
            output_dir=tmp_path,
            run_name="r",
            echo=lambda *_: None,
        )
    assert captured_submission == {}
    assert not (tmp_path / "r").exists()


def test_dropout_tracebacks_are_shown_as_one_line_each():
    seen: set[str] = set()
    lines = [
        "ERROR :     An exception was raised when processing a message by RayBackend",
        "ERROR :     Traceback (most recent call last):",
        "    raise RuntimeError(",
        "RuntimeError: simulated dropout: partition 2 fails in round 1 (fault-dropout = 0.3)",
        "INFO :      \t> Received error in reply from node 5: <class 'x'>:<'ray::ClientAppActor.run()",
        "RuntimeError: simulated dropout: partition 2 fails in round 1 (fault-dropout = 0.3)",
        "INFO fedge: round 1/3  accuracy 0.5",
        "ValueError: something real",
    ]

    shown = [s for line in lines if (s := line_to_show(line, seen))]

    assert shown == [
        "fedge simulate: simulated dropout: partition 2 fails in round 1 (fault-dropout = 0.3)",
        "INFO fedge: round 1/3  accuracy 0.5",
        "ValueError: something real",
    ]

import hashlib
import json
import logging
import math
import os
import random
from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg

from fedge.server.checkpoint import (
    checkpoint_path,
    load_latest_checkpoint,
    restore_strategy_state,
    save_checkpoint,
    strategy_state,
)
from fedge.server.reply_check import ReplyCheck
from fedge.server.robust_strategy import RobustStrategy
from fedge.server.strategy_factory import build_strategy
from fedge.shared.config import from_run_config
from fedge.shared.errors import ConfigError

LOGGER = "fedge.server.checkpoint"


def arrays(value=0.0):
    return OrderedDict(
        [
            ("fc.weight", torch.full((3, 2), value)),
            ("fc.bias", torch.full((3,), value)),
        ]
    )


def save(run_dir, server_round, **overrides):
    kwargs = {
        "server_round": server_round,
        "arrays": arrays(float(server_round)),
        "strategy_state": {"strategy": "FedAvg"},
        "metrics_history": [{"round": r} for r in range(server_round + 1)],
        "config": {"strategy": {"name": "fedavg"}},
        "rng_state": {"sampler-seed": 0},
    }
    kwargs.update(overrides)
    return save_checkpoint(run_dir, **kwargs)


def ckfiles(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


# ------------------------------------------------------------------ round trip
def test_everything_round_trips(tmp_path):
    # Prepare
    m_t = {"w": np.arange(6, dtype=np.float64).reshape(2, 3)}
    history = [{"round": 0, "central-loss": 2.3, "epsilon-max": float("nan")}]
    rng = random.Random(4).getstate()
    # Execute
    path = save(
        tmp_path,
        3,
        strategy_state={"strategy": "FedAdam", "m_t": m_t, "v_t": None},
        metrics_history=history,
        config={"nested": {"tuple": (1, 2), "bytes": b"x", "none": None}},
        rng_state={"python": rng, "np-scalar": np.int64(7)},
    )
    ck = load_latest_checkpoint(tmp_path)
    # Assert
    assert (
        path == checkpoint_path(tmp_path, 3) == tmp_path / "checkpoints/round-0003.pt"
    )
    assert ck.server_round == 3 and ck.path == path
    assert list(ck.arrays) == ["fc.weight", "fc.bias"]
    torch.testing.assert_close(ck.arrays["fc.weight"], torch.full((3, 2), 3.0))
    np.testing.assert_array_equal(ck.strategy_state["m_t"]["w"], m_t["w"])
    assert ck.strategy_state["m_t"]["w"].dtype == np.float64
    assert ck.strategy_state["v_t"] is None
    assert ck.metrics_history[0]["central-loss"] == 2.3
    assert math.isnan(ck.metrics_history[0]["epsilon-max"])
    assert ck.config == {"nested": {"tuple": (1, 2), "bytes": b"x", "none": None}}
    assert ck.rng_state["python"] == rng
    assert ck.rng_state["np-scalar"] == 7
    record = ck.array_record()
    np.testing.assert_array_equal(
        record["fc.bias"].numpy(), np.full(3, 3.0, np.float32)
    )


def test_what_the_reply_checks_remember_round_trips(tmp_path, fakes):
    # Prepare: node 2 refused, node 7 released once (the coordinator's record)
    checks = ReplyCheck(privacy_plan=lambda n: None)
    checks.load_state_dict({"refusals-logged": [2]})
    checks.privacy_record.add(7, 1, (1.1, 0.2, 10), 1e-4)
    # Execute
    save(tmp_path, 1, reply_checks=checks.state_dict())
    resumed = ReplyCheck(privacy_plan=lambda n: None)
    resumed.load_state_dict(load_latest_checkpoint(tmp_path).reply_checks)
    # Assert
    assert resumed.refused_nodes == {2}
    assert resumed.privacy_record == checks.privacy_record


def test_a_checkpoint_from_before_the_checks_left_the_strategy_resumes_them(
    tmp_path,
):
    # Checkpoints written while the wrapper kept them hold the checks' state
    # in its strategy state.
    state = {"refusals-logged": [3], "privacy-record": {"releases": {}, "deltas": {}}}
    path = save(
        tmp_path,
        2,
        strategy_state={"strategy": "FedAvg", "wrappers": {"RobustStrategy": state}},
    )
    payload = torch.load(path, weights_only=True)
    del payload["reply-checks"]
    torch.save(payload, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")
    (path.parent / "latest.json").unlink()  # names the old hash

    ck = load_latest_checkpoint(tmp_path)

    assert ck.reply_checks == state
    restore_strategy_state(FedAvg(), ck.strategy_state)


def test_arrays_may_be_an_array_record_or_numpy(tmp_path, fakes):
    save(tmp_path, 1, arrays=fakes.record({"w": np.ones((2, 2), np.float32)}))
    assert load_latest_checkpoint(tmp_path).arrays["w"].dtype == torch.float32
    save(tmp_path, 2, arrays={"w": np.full(2, 5, np.int64)})
    assert load_latest_checkpoint(tmp_path).arrays["w"].tolist() == [5, 5]


def test_pointer_and_sidecar_hold_the_file_hash(tmp_path):
    path = save(tmp_path, 2)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()  # independent hash
    pointer = json.loads((tmp_path / "checkpoints/latest.json").read_text())
    assert pointer["file"] == "round-0002.pt" and pointer["server-round"] == 2
    assert pointer["sha256"] == digest
    assert (tmp_path / "checkpoints/round-0002.pt.sha256").read_text() == (
        f"{digest}  round-0002.pt\n"
    )


def test_no_checkpoint_is_none(tmp_path):
    assert load_latest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    assert load_latest_checkpoint(tmp_path) is None


def test_unsupported_objects_are_refused_with_their_place(tmp_path):
    with pytest.raises(TypeError, match=r"Cannot checkpoint set at \['a'\]\[0\]"):
        save(tmp_path, 1, config={"a": [{1, 2}]})


# --------------------------------------------------------- crashes, corruption
def test_crash_during_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    save(tmp_path, 1)
    real_replace = os.replace

    def crash_on_round_2(src, dst):
        if str(dst).endswith("round-0002.pt"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_round_2)
    with pytest.raises(OSError, match="disk full"):
        save(tmp_path, 2)
    monkeypatch.setattr(os, "replace", real_replace)
    ck = load_latest_checkpoint(tmp_path)
    assert ck.server_round == 1
    assert "round-0002.pt" not in ckfiles(tmp_path)
    assert not [n for n in ckfiles(tmp_path) if n.endswith(".tmp")]


def test_truncated_latest_falls_back_with_a_warning(tmp_path, caplog):
    for r in (1, 2, 3):
        save(tmp_path, r)
    latest = checkpoint_path(tmp_path, 3)
    latest.write_bytes(latest.read_bytes()[:100])  # a torn write
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ck = load_latest_checkpoint(tmp_path)
    assert ck.server_round == 2
    torch.testing.assert_close(ck.arrays["fc.bias"], torch.full((3,), 2.0))
    assert "round-0003.pt is unusable: sha256 mismatch (100 bytes" in caplog.text
    assert "Resuming from round-0002.pt (round 2)" in caplog.text


def test_unloadable_file_without_recorded_hash_falls_back(tmp_path, caplog):
    for r in (1, 2):
        save(tmp_path, r)
    folder = tmp_path / "checkpoints"
    (folder / "latest.json").unlink()
    (folder / "round-0002.pt.sha256").unlink()
    (folder / "round-0002.pt").write_bytes(b"not a zip file")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ck = load_latest_checkpoint(tmp_path)
    assert ck.server_round == 1
    assert "latest.json is missing" in caplog.text
    assert "round-0002.pt has no recorded sha256; loading it unverified" in caplog.text
    assert "round-0002.pt is unusable: torch.load failed" in caplog.text


def test_corrupt_pointer_is_reported_and_files_are_scanned(tmp_path, caplog):
    for r in (1, 2):
        save(tmp_path, r)
    (tmp_path / "checkpoints/latest.json").write_text('{"server-round": 2, "fi')
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ck = load_latest_checkpoint(tmp_path)
    assert ck.server_round == 2
    assert "latest.json is unreadable" in caplog.text


def test_a_file_renamed_to_another_round_is_refused(tmp_path, caplog):
    save(tmp_path, 1)
    folder = tmp_path / "checkpoints"
    (folder / "round-0001.pt").rename(folder / "round-0002.pt")
    (folder / "round-0001.pt.sha256").unlink()
    (folder / "latest.json").unlink()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert load_latest_checkpoint(tmp_path) is None
    assert "holds format 'fedge-checkpoint/1' round 1, expected" in caplog.text
    assert "No usable checkpoint in" in caplog.text


def test_files_newer_than_the_pointer_are_not_committed(tmp_path):
    for r in (1, 2, 3):
        save(tmp_path, r)
    pointer = (tmp_path / "checkpoints/latest.json").read_text()
    save(tmp_path, 4)
    # crash between writing round-0004.pt and the pointer
    (tmp_path / "checkpoints/latest.json").write_text(pointer)
    assert load_latest_checkpoint(tmp_path).server_round == 3
    # the resumed run rewrites round 4; a stale round 5 from before would go too
    save(tmp_path, 5)
    save(tmp_path, 4)
    assert load_latest_checkpoint(tmp_path).server_round == 4
    assert "round-0005.pt" not in ckfiles(tmp_path)


# ---------------------------------------------------------------- keep last K
def test_keeps_the_last_k(tmp_path):
    for r in range(1, 6):
        save(tmp_path, r, keep_last=3)
    assert ckfiles(tmp_path) == [
        "latest.json",
        "round-0003.pt",
        "round-0003.pt.sha256",
        "round-0004.pt",
        "round-0004.pt.sha256",
        "round-0005.pt",
        "round-0005.pt.sha256",
    ]


def test_stray_temp_files_are_cleaned(tmp_path):
    save(tmp_path, 1)
    stray = tmp_path / "checkpoints/.round-0002.pt.abc123.tmp"
    stray.write_bytes(b"half")
    orphan = tmp_path / "checkpoints/round-0007.pt.sha256"
    orphan.write_text("0" * 64 + "  round-0007.pt\n")
    save(tmp_path, 2)
    assert not stray.exists()
    assert not orphan.exists()


# ------------------------------------------------------------- strategy state
def fedadam_config():
    return from_run_config(
        {"strategy": "fedadam", "server-learning-rate": 0.1}, fill_defaults=True
    )


def guarded(strategy):
    return RobustStrategy(strategy, sampler_seed=0, node_wait_timeout_s=5.0)


def train_round(strategy, server_round, record, fakes):
    """Deterministic client updates that depend on round, node and global model."""
    msgs = strategy.configure_train(
        server_round, record, ConfigRecord(), fakes.FakeGrid([1, 2])
    )
    replies = []
    for m in msgs:
        node = m.metadata.dst_node_id
        w = m.content["arrays"]["w"].numpy()
        step = np.sin(np.arange(w.size, dtype=np.float32) + node * server_round)
        replies.append(fakes.reply(m, {"w": w + step.reshape(w.shape)}))
    new, _ = strategy.aggregate_train(server_round, replies)
    return new


def test_fedadam_resumes_exactly_where_it_stopped(tmp_path, fakes):
    start = fakes.record({"w": np.zeros((2, 3), np.float32)})
    # Uninterrupted: rounds 1-4
    a = guarded(build_strategy(fedadam_config()))
    record = start
    for r in (1, 2, 3, 4):
        record = train_round(a, r, record, fakes)
    expected = record["w"].numpy()
    # Interrupted after round 2, checkpointed, resumed in a new strategy
    b = guarded(build_strategy(fedadam_config()))
    record = start
    for r in (1, 2):
        record = train_round(b, r, record, fakes)
    save(tmp_path, 2, arrays=record, strategy_state=strategy_state(b))
    ck = load_latest_checkpoint(tmp_path)
    c = guarded(build_strategy(fedadam_config()))
    restore_strategy_state(c, ck.strategy_state)
    record = ck.array_record()
    for r in (3, 4):
        record = train_round(c, r, record, fakes)
    np.testing.assert_array_equal(record["w"].numpy(), expected)
    # Control: the same resume without the moments lands elsewhere
    d = guarded(build_strategy(fedadam_config()))
    record = ck.array_record()
    for r in (3, 4):
        record = train_round(d, r, record, fakes)
    assert not np.allclose(record["w"].numpy(), expected)


def test_state_names_the_strategy_and_the_moments(fakes):
    s = guarded(build_strategy(fedadam_config()))
    assert strategy_state(s) == {"strategy": "FedAdam", "m_t": None, "v_t": None}
    assert strategy_state(FedAvg()) == {"strategy": "FedAvg"}


def test_restoring_into_another_strategy_is_refused():
    with pytest.raises(
        ConfigError,
        match=r"state of strategy 'FedAdam', but the run config builds 'FedAvg'",
    ):
        restore_strategy_state(FedAvg(), {"strategy": "FedAdam", "m_t": None})

import json
import os

import pytest
from flwr.app import RecordDict
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from fedge.client.privacy_ledger import (
    STATE_KEY,
    LedgerError,
    PrivacyLedger,
    ledger_path,
    restore_ledger,
)
from fedge.shared.errors import ConfigError

ORDERS = RDPAccountant.DEFAULT_ALPHAS


def direct_rdp_epsilon(q, sigma, steps, delta):
    rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=ORDERS)
    return get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)[0]


def ledger_with(rounds, sigma=1.1, q=0.2, steps=10, run_id="run-1", node_key="n0"):
    ledger = PrivacyLedger(run_id=run_id, node_key=node_key)
    for r in range(1, rounds + 1):
        ledger.record(
            server_round=r, noise_multiplier=sigma, sample_rate=q, steps=steps
        )
    return ledger


def test_recording_a_round_twice_by_accident_is_refused_and_changes_nothing():
    ledger = ledger_with(2)
    before = ledger.history.epsilon(delta=1e-5)
    with pytest.raises(
        LedgerError, match="round 2 is already recorded; a second release of it"
    ):
        ledger.record(server_round=2, noise_multiplier=1.1, sample_rate=0.2, steps=10)
    assert len(ledger.history) == 2
    assert ledger.history.epsilon(delta=1e-5) == before


def test_a_round_released_again_is_one_more_entry_and_counts_in_epsilon(tmp_path):
    # Rounds 1, 2, then 2 again (the coordinator lost its reply): three releases
    # of 10 steps each, so ε is Opacus's for 30 steps, not 20.
    ledger = ledger_with(2, sigma=1.1, q=0.2, steps=10)
    ledger.record(
        server_round=2, noise_multiplier=1.1, sample_rate=0.2, steps=10, again=True
    )
    assert ledger.history.server_rounds == [1, 2, 2]
    assert ledger.history.total_steps == 30
    assert ledger.history.epsilon(delta=1e-5) == pytest.approx(
        direct_rdp_epsilon(0.2, 1.1, 30, 1e-5), rel=1e-12
    )
    # The repeat survives a save and a load, in both copies.
    path = tmp_path / "ledger.json"
    ledger.save(path)
    loaded = PrivacyLedger.load(path, "run-1", node_key="n0")
    assert loaded.history == ledger.history
    state = RecordDict({STATE_KEY: ledger.to_config_record()})
    restored = restore_ledger(
        path=path, state_record=state[STATE_KEY], run_id="run-1", node_key="n0"
    )
    assert restored.history == ledger.history


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"noise_multiplier": -0.5},
            r"round 1: noise_multiplier must be finite and >= 0",
        ),
        ({"sample_rate": 0.0}, r"round 1: sample_rate must be in \(0, 1\]"),
        ({"steps": -1}, r"round 1: steps must be an integer >= 0"),
        ({"server_round": "1"}, r"server_round must be an int, got '1'"),
    ],
)
def test_invalid_entries_are_refused(kwargs, match):
    args = {"server_round": 1, "noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 5}
    with pytest.raises(ConfigError, match=match):
        PrivacyLedger(run_id="r").record(**(args | kwargs))


def test_fresh_client_with_same_state_dir_continues_not_from_zero(tmp_path):
    path = ledger_path(tmp_path, "run-1")
    first = PrivacyLedger.load(path, "run-1", node_key="n0")  # no file yet
    assert len(first.history) == 0 and first.history.epsilon(delta=1e-5) == 0.0
    first.record(server_round=1, noise_multiplier=1.1, sample_rate=0.2, steps=10)
    first.save(path)
    eps_one = first.history.epsilon(delta=1e-5)

    restarted = PrivacyLedger.load(path, "run-1", node_key="n0")  # new process
    assert restarted == first
    assert restarted.history.epsilon(delta=1e-5) == eps_one > 0
    restarted.record(server_round=2, noise_multiplier=1.1, sample_rate=0.2, steps=10)
    restarted.save(path)
    again = PrivacyLedger.load(path, "run-1", node_key="n0")
    assert again.history.total_steps == 20
    assert again.history.epsilon(delta=1e-5) == pytest.approx(
        direct_rdp_epsilon(0.2, 1.1, 20, 1e-5)
    )


def test_ledger_path_is_per_run_and_safe(tmp_path):
    assert ledger_path(tmp_path, 7) == tmp_path / "privacy-ledger-7.json"
    assert ledger_path(tmp_path, "a/b") == tmp_path / "privacy-ledger-a_b.json"


def saved(tmp_path, **kwargs):
    path = tmp_path / "ledger.json"
    ledger_with(2, **kwargs).save(path)
    return path


def test_corrupt_json_is_refused(tmp_path):
    path = saved(tmp_path)
    path.write_text(path.read_text()[:40])  # truncated
    with pytest.raises(
        LedgerError, match=r"unreadable or not JSON .*refusing to train"
    ):
        PrivacyLedger.load(path, "run-1", node_key="n0")


def test_empty_file_is_refused_not_reset(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text("")
    with pytest.raises(LedgerError, match="not JSON"):
        PrivacyLedger.load(path, "run-1", node_key="n0")


def test_edited_ledger_fails_checksum(tmp_path):
    path = saved(tmp_path)
    doc = json.loads(path.read_text())
    doc["steps"] = [1, 1]  # someone lowers the count
    path.write_text(json.dumps(doc))
    with pytest.raises(LedgerError, match="fails its checksum"):
        PrivacyLedger.load(path, "run-1", node_key="n0")


def test_other_format_version_is_refused(tmp_path):
    path = saved(tmp_path)
    doc = json.loads(path.read_text())
    doc["format-version"] = 2
    path.write_text(json.dumps(doc))
    with pytest.raises(LedgerError, match="format version 2, expected 1"):
        PrivacyLedger.load(path, "run-1", node_key="n0")


def test_ledger_of_another_run_is_refused(tmp_path):
    path = saved(tmp_path, run_id="run-0")
    with pytest.raises(LedgerError, match="belongs to run 'run-0', not run 'run-1'"):
        PrivacyLedger.load(path, "run-1", node_key="n0")


def test_ledger_of_another_node_is_refused(tmp_path):
    path = saved(tmp_path, node_key="n9")
    with pytest.raises(LedgerError, match="belongs to node 'n9', not 'n0'"):
        PrivacyLedger.load(path, "run-1", node_key="n0")


def test_non_object_json_is_refused(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text("[1, 2]")
    with pytest.raises(LedgerError, match="not a JSON object"):
        PrivacyLedger.load(path, "run-1")


def test_failed_write_leaves_the_old_ledger_intact(tmp_path, monkeypatch):
    path = saved(tmp_path)
    old_text = path.read_text()
    bigger = ledger_with(5)
    real_fdopen = os.fdopen

    class HalfWriter:
        """Writes half of the bytes to the temp file, then fails (disk full)."""

        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(
        os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode))
    )
    with pytest.raises(OSError, match="No space left"):
        bigger.save(path)
    monkeypatch.undo()

    assert path.read_text() == old_text
    assert PrivacyLedger.load(path, "run-1", node_key="n0") == ledger_with(2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json"]


def test_config_record_round_trip_through_context_state():
    ledger = ledger_with(3)
    state = RecordDict()
    state["privacy-ledger"] = ledger.to_config_record()
    back = PrivacyLedger.from_config_record(
        state["privacy-ledger"], run_id="run-1", node_key="n0"
    )
    assert back == ledger
    assert back.history.epsilon(delta=1e-5) == ledger.history.epsilon(delta=1e-5)
    empty = PrivacyLedger(run_id="run-1")
    assert (
        PrivacyLedger.from_config_record(empty.to_config_record(), run_id="run-1")
        == empty
    )


def test_config_record_of_another_run_or_tampered_is_refused():
    record = ledger_with(2).to_config_record()
    with pytest.raises(LedgerError, match=r"context\.state belongs to run 'run-1'"):
        PrivacyLedger.from_config_record(record, run_id="run-2", node_key="n0")
    record["steps"] = [0, 0]
    with pytest.raises(LedgerError, match=r"context\.state fails its checksum"):
        PrivacyLedger.from_config_record(record, run_id="run-1", node_key="n0")


def with_checksum(doc):
    import hashlib

    payload = {k: v for k, v in doc.items() if k != "sha256"}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return payload | {"sha256": hashlib.sha256(canonical.encode()).hexdigest()}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"steps": [10]}, r"malformed .*zip\(\)"),  # columns of unequal length
        ({"server-rounds": [1, "1"]}, r"malformed .*server_round must be an int"),
        ({"noise-multipliers": [1.1, -1.0]}, r"malformed .*noise_multiplier must be"),
    ],
)
def test_well_signed_but_inconsistent_ledger_is_refused(tmp_path, change, match):
    path = saved(tmp_path)
    doc = json.loads(path.read_text()) | change
    path.write_text(json.dumps(with_checksum(doc)))
    with pytest.raises(LedgerError, match=match):
        PrivacyLedger.load(path, "run-1", node_key="n0")


def test_restore_prefers_the_copy_that_knows_more(tmp_path):
    path = tmp_path / "ledger.json"
    ledger_with(2).save(path)  # disk lags: crashed before writing round 3
    state = RecordDict({STATE_KEY: ledger_with(3).to_config_record()})
    got = restore_ledger(
        path=path, state_record=state[STATE_KEY], run_id="run-1", node_key="n0"
    )
    assert got == ledger_with(3)
    # and the other way round: a fresh process has no context.state
    ledger_with(3).save(path)
    got = restore_ledger(path=path, state_record=None, run_id="run-1", node_key="n0")
    assert got == ledger_with(3)
    empty = restore_ledger(path=None, state_record=None, run_id="run-1")
    assert empty == PrivacyLedger(run_id="run-1")


def test_restore_refuses_copies_that_disagree(tmp_path):
    path = tmp_path / "ledger.json"
    ledger_with(2, sigma=1.1).save(path)
    record = ledger_with(2, sigma=0.9).to_config_record()
    with pytest.raises(LedgerError, match="disagree for run 'run-1'"):
        restore_ledger(path=path, state_record=record, run_id="run-1", node_key="n0")


# A ledger file as fedge wrote it before the ledger kept a ReleaseHistory
# (three releases, round 2 twice), byte for byte with its checksum.
OLD_LEDGER_FILE = """{
  "format-version": 1,
  "node-key": "partition:0/3",
  "noise-multipliers": [1.1, 1.1, 1.1],
  "run-id": "run-1",
  "sample-rates": [0.21333333333333335, 0.21333333333333335, 0.21333333333333335],
  "server-rounds": [1, 2, 2],
  "sha256": "001cdb56d0692559c5ff18ef02d471b8a9f4c6ec56e24fc9dc9acf5721f33983",
  "steps": [10, 10, 10]
}
"""


def test_a_ledger_written_by_the_previous_code_loads_and_is_written_the_same(
    tmp_path,
):
    path = tmp_path / "ledger.json"
    path.write_text(OLD_LEDGER_FILE)
    ledger = PrivacyLedger.load(path, "run-1", node_key="partition:0/3")
    assert ledger.history.server_rounds == [1, 2, 2]
    assert ledger.history.total_steps == 30
    assert ledger.history.epsilon(delta=1e-4) == pytest.approx(
        direct_rdp_epsilon(32 / 150, 1.1, 30, 1e-4), rel=1e-12
    )
    ledger.save(path)  # the same document again, checksum included
    assert json.loads(path.read_text()) == json.loads(OLD_LEDGER_FILE)

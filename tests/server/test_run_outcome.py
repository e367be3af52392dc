"""A run in which no round aggregated an update ends failed, and saves no model."""

import json
import math

import pytest
from flwr.app import ArrayRecord

from fedge.server import federation
from fedge.server.federation_loop import RoundOutcome
from fedge.server.metrics_history import MetricsHistory
from fedge.server.round_summary import round_row
from fedge.server.run_outcome import (
    NothingTrainedError,
    refuse_untrained,
    untrained_reason,
)
from fedge.shared.config import from_run_config
from fedge.shared.errors import RunFailedError
from fedge.shared.run_folder import write_status

SHADOWED = "ModuleNotFoundError: No module named 'client.client_app'; 'client' is not a package"
CAUSE = (
    "a module named 'client' that is not a package, such as a file client.py in the "
    "folder the run or node was started from, hides the app's 'client' package; "
    "rename that file or start from another folder"
)
INITIAL = {"round": 0, "central-accuracy": 0.042}


def failed_round(server_round, *, sampled=2, errors=None, **counts):
    errors = {SHADOWED: sampled} if errors is None else errors
    record = {
        "round": server_round,
        "sampled": sampled,
        "replies": 0,
        "failures": sampled,
        "dropped": 0,
        "refused": 0,
        "aggregated": 0,
        **counts,
    }
    if errors:
        record["reply-errors"] = errors
    return record


def test_no_aggregated_round_fails_with_the_tally_and_the_error_and_its_cause():
    records = [INITIAL, failed_round(1), failed_round(2)]

    assert untrained_reason(records) == (
        "no round aggregated an update: after rounds 1-2 (4 nodes sampled, 4 "
        "failed, 0 dropped, 0 refused) the model is still the untrained initial "
        f"one; every node failed with {SHADOWED} (likely cause: {CAUSE})"
    )


def test_one_aggregated_round_is_enough_to_complete():
    trained = {
        **failed_round(2, errors={}),
        "replies": 2,
        "failures": 0,
        "aggregated": 2,
    }

    assert untrained_reason([INITIAL, failed_round(1), trained]) is None
    assert untrained_reason([INITIAL, trained, failed_round(3)]) is None


def test_rounds_without_error_replies_are_tallied_without_an_error():
    # Every node dropped (bad update) in round 1 and refused (budget) in round 2.
    records = [
        INITIAL,
        failed_round(1, errors={}, replies=3, failures=0, dropped=3, sampled=3),
        failed_round(2, errors={}, replies=3, failures=0, refused=3, sampled=3),
    ]

    assert untrained_reason(records) == (
        "no round aggregated an update: after rounds 1-2 (6 nodes sampled, 0 "
        "failed, 3 dropped, 3 refused) the model is still the untrained initial one"
    )


def test_different_errors_name_the_most_frequent_one():
    records = [
        INITIAL,
        failed_round(1, sampled=3, errors={"RuntimeError: a": 1, "ValueError: b": 2}),
    ]

    assert untrained_reason(records) == (
        "no round aggregated an update: after round 1 (3 nodes sampled, 3 failed, "
        "0 dropped, 0 refused) the model is still the untrained initial one; the "
        "most frequent error (2 of 3 error replies): ValueError: b"
    )


def test_some_nodes_silent_is_not_every_node_failing_with_the_error():
    # 3 failed: 2 with the error, 1 never answered.
    records = [INITIAL, failed_round(1, sampled=3, errors={"ValueError: b": 2})]

    assert untrained_reason(records).endswith(
        "; the most frequent error (2 of 2 error replies): ValueError: b"
    )


@pytest.mark.parametrize(("replies", "trained"), [(2, True), (0, False)])
def test_a_record_without_aggregated_counts_its_replies(replies, trained):
    # Folders written before rounds recorded "aggregated" (or NaN in the CSV).
    legacy = {"round": 1, "sampled": 2, "replies": replies, "failures": 2 - replies}
    nan = {**legacy, "aggregated": math.nan}

    assert (untrained_reason([INITIAL, legacy]) is None) == trained
    assert (untrained_reason([INITIAL, nan]) is None) == trained


def test_refusing_an_untrained_run_records_why_and_that_resuming_cannot_help(tmp_path):
    write_status(tmp_path, "running")

    with pytest.raises(
        NothingTrainedError, match=r"^no round aggregated an update"
    ) as e:
        refuse_untrained(tmp_path, [INITIAL, failed_round(1), failed_round(2)])

    assert isinstance(e.value, RunFailedError)  # the CLI's exit 1
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "failed"
    assert status["message"] == str(e.value)
    assert SHADOWED in status["message"]
    assert status["final_round"] == 2
    assert status["resumable"] is False


def test_a_trained_run_is_not_refused(tmp_path):
    write_status(tmp_path, "running")
    trained = {**failed_round(1, errors={}), "aggregated": 1}

    refuse_untrained(tmp_path, [INITIAL, trained])

    assert json.loads((tmp_path / "status.json").read_text())["state"] == "running"


def test_the_end_of_an_untrained_run_saves_and_exports_nothing(tmp_path):
    config = from_run_config(
        {"output-dir": str(tmp_path), "run-name": "r", "export-onnx": True},
        fill_defaults=True,
    )
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    write_status(run_dir, "running")
    history = MetricsHistory(run_dir)
    history.append(INITIAL)
    for server_round in (1, 2):
        # The round loop's outcome when both nodes failed with the import error.
        outcome = RoundOutcome(
            server_round=server_round,
            arrays=ArrayRecord(),
            central={"accuracy": 0.042},
            sampled=2,
            failures=2,
            reply_errors=[SHADOWED, SHADOWED],
            updated=False,
        )
        row, details = round_row(outcome, fairness_threshold=0.8)
        history.append(row, details=details)

    with pytest.raises(NothingTrainedError, match="every node failed with Module"):
        federation._finish(run_dir, config, None, None, None, "", None)

    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"
    left = sorted(p.name for p in run_dir.iterdir())
    assert left == ["metrics.csv", "metrics.jsonl", "status.json"]

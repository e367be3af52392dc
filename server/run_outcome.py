"""Whether a run that got through its rounds trained anything.

A run whose every round left the global model unchanged (each node failed,
timed out, was dropped or refused) ends with the model it started from. Saving
that as the run's model and calling the run complete would pass an untrained
model off as a result, so such a run ends ``failed``: ``status.json`` says why
(the rounds' tally and the error the nodes replied, with its likely cause),
the metrics and checkpoints stay, and no model is saved or exported.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedge.server.reply_errors import with_likely_cause
from fedge.shared.errors import RunFailedError
from fedge.shared.run_folder import (
    AGGREGATED,
    DROPPED,
    FAILED,
    FAILURES,
    REFUSED,
    REPLIES,
    REPLY_ERRORS,
    RESUMABLE,
    ROUND,
    SAMPLED,
    write_status,
)


class NothingTrainedError(RunFailedError):
    """No round aggregated an update; ``status.json`` records the reason."""


def untrained_reason(records: Sequence[Mapping[str, Any]]) -> str | None:
    """Say why a run's model is still its initial one, or None if a round trained it.

    Parameters
    ----------
    records : sequence of mapping
        The run's ``metrics.jsonl`` records, round 0 (the initial model) included.
        A round counts as trained when its ``aggregated`` is above 0 (a record
        without that field: when it had ``replies``).

    Returns
    -------
    str or None
        None when at least one round aggregated an update. Otherwise one line:
        the rounds, how many nodes were sampled, failed, dropped and refused in
        them, and the error the nodes replied most often with its likely cause.
    """
    rounds = [r for r in records if (_count(r.get(ROUND)) or 0) > 0]
    if any(_aggregated(r) > 0 for r in rounds):
        return None
    if not rounds:
        return "no round ran, so the model is the untrained initial one"
    numbers = [int(r[ROUND]) for r in rounds]
    span = (
        f"round {numbers[0]}"
        if len(numbers) == 1
        else f"rounds {min(numbers)}-{max(numbers)}"
    )
    tally = {key: sum(_count(r.get(key)) or 0 for r in rounds) for key in _TALLIED}
    reason = (
        f"no round aggregated an update: after {span} ({tally[SAMPLED]} nodes "
        f"sampled, {tally[FAILURES]} failed, {tally[DROPPED]} dropped, "
        f"{tally[REFUSED]} refused) the model is still the untrained initial one"
    )
    errors: Counter[str] = Counter()
    for record in rounds:
        errors.update(dict(record.get(REPLY_ERRORS) or {}))
    if not errors:
        return reason
    (error, nodes), *others = errors.most_common()
    if not others and nodes == tally[FAILURES]:
        return f"{reason}; every node failed with {with_likely_cause(error)}"
    return (
        f"{reason}; the most frequent error ({nodes} of {sum(errors.values())} "
        f"error replies): {with_likely_cause(error)}"
    )


def refuse_untrained(run_dir: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """End a run that trained nothing as failed; return quietly if a round trained.

    ``status.json`` gets state ``failed``, :func:`untrained_reason` and
    ``resumable`` false: resuming would find no round left to run.

    Raises
    ------
    NothingTrainedError
        With the reason, when no round aggregated an update.
    """
    reason = untrained_reason(records)
    if reason is None:
        return
    last_round = max((_count(r.get(ROUND)) or 0 for r in records), default=0)
    write_status(run_dir, FAILED, reason, final_round=last_round, **{RESUMABLE: False})
    raise NothingTrainedError(reason)


_TALLIED = (SAMPLED, FAILURES, DROPPED, REFUSED)


def _aggregated(record: Mapping[str, Any]) -> int:
    aggregated = _count(record.get(AGGREGATED))
    if aggregated is not None:
        return aggregated
    return _count(record.get(REPLIES)) or 0


def _count(value: Any) -> int | None:
    """``value`` as a count, or None when missing, not a number, or NaN."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else int(value)

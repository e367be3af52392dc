"""The per-node privacy ledger: every DP-SGD round a node trained in one run.

A node's ε is cumulative over the whole run, so what it has spent must survive
rounds, process restarts (deployment starts a new ClientApp process per
message) and crashes. The ledger is the node's
:class:`~fedge.shared.privacy_history.ReleaseHistory` (the type the
coordinator's record keeps too) with its owner; ε is always recomputed from it
by Opacus's accountant, never stored.

It lives in two places: Flower's ``context.state`` (:meth:`to_config_record` /
:meth:`from_config_record`) and a JSON file in the node's state directory
(:meth:`save` / :meth:`load`), written atomically with a format version and a
SHA-256 checksum; :func:`restore_ledger` reads both and keeps the copy that
knows more. Anything doubtful (corrupt file, bad checksum, unknown format,
a ledger of another run or node) raises :class:`LedgerError`: the node must
refuse to train rather than restart its count from zero.

Entries are only ever added, never replaced or removed: replacing an entry
could undercount ε. The caller records after training, before replying, so
every entry is an update that may have been released. A server round asked for
again (the coordinator lost the reply and resumed from an earlier checkpoint)
is trained again and recorded as a second entry of the same round, only when
the caller says so (``again=True``): both updates may have been released, so ε
counts both. Recording a round twice by accident is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord

from fedge.shared.atomic_io import atomic_write_bytes
from fedge.shared.errors import DataError
from fedge.shared.privacy_history import LEDGER_COLUMNS, Release, ReleaseHistory

FORMAT_VERSION = 1
STATE_KEY = "privacy-ledger"  # the ConfigRecord's name in context.state


class LedgerError(DataError):
    """The privacy ledger cannot be trusted or updated; the node must not train."""


@dataclass
class PrivacyLedger:
    """What one node spent in one run.

    Parameters
    ----------
    run_id : str
        The Flower run this ledger belongs to.
    node_key : str
        A name for the node that is stable across restarts (e.g. its data path
        or partition id; not Flower's node id, which changes when a SuperNode
        restarts). Guards against loading another node's ledger.
    history : ReleaseHistory
        The node's releases, in the order the rounds were trained.
    """

    run_id: str
    node_key: str = ""
    history: ReleaseHistory = field(default_factory=ReleaseHistory)

    def record(
        self,
        *,
        server_round: int,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        again: bool = False,
    ) -> None:
        """Add the steps trained in ``server_round``.

        Parameters
        ----------
        server_round : int
        noise_multiplier, sample_rate : float
        steps : int
            The DP-SGD steps released with this round's update.
        again : bool, default False
            ``server_round`` was released before and is released once more:
            add a second entry for it (ε counts both releases).

        Raises
        ------
        LedgerError
            If ``server_round`` is already recorded and ``again`` is False
            (see module docstring).
        ConfigError
            If the entry is invalid.
        """
        release = Release.checked(
            server_round,
            (noise_multiplier, sample_rate, steps),
            where=f"round {server_round}",
        )
        if self.history.has_round(server_round) and not again:
            raise LedgerError(
                f"Privacy ledger of run {self.run_id}: round {server_round} is "
                "already recorded; a second release of it must be recorded as "
                "one more entry (again=True), never in place of the first, "
                "since ε would be undercounted."
            )
        self.history = self.history.plus(release)

    # ------------------------------------------------------------ serialisation
    def _payload(self) -> dict[str, Any]:
        return {
            "format-version": FORMAT_VERSION,
            "run-id": self.run_id,
            "node-key": self.node_key,
            **self.history.to_columns(LEDGER_COLUMNS),
        }

    def to_config_record(self) -> ConfigRecord:
        """Return the ledger as a ConfigRecord for ``context.state`` (with checksum)."""
        payload = self._payload()
        return ConfigRecord({**payload, "sha256": _checksum(payload)})

    @classmethod
    def from_config_record(
        cls, record: ConfigRecord, *, run_id: str, node_key: str = ""
    ) -> PrivacyLedger:
        """Rebuild from :meth:`to_config_record`, checking run, node and checksum.

        Raises
        ------
        LedgerError
            If the record is malformed, altered, or belongs to another run/node.
        """
        return _from_document(dict(record), run_id, node_key, source="context.state")

    def save(self, path: str | Path) -> None:
        """Write the ledger to ``path`` atomically (old file kept on failure)."""
        payload = self._payload()
        document = {**payload, "sha256": _checksum(payload)}
        text = json.dumps(document, indent=2, sort_keys=True) + "\n"
        atomic_write_bytes(path, text.encode("utf-8"))

    @classmethod
    def load(
        cls, path: str | Path, run_id: str, *, node_key: str = ""
    ) -> PrivacyLedger:
        """Read the ledger at ``path``; a missing file gives an empty ledger.

        Raises
        ------
        LedgerError
            If the file is unreadable, corrupt, of another format version, or
            belongs to another run or node.
        """
        path = Path(path)
        if not path.exists():
            return cls(run_id=run_id, node_key=node_key)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LedgerError(
                f"Privacy ledger {path} is unreadable or not JSON ({e}); refusing "
                "to train, since the ε already spent is unknown. Restore the file "
                "or, if this node's data was never used in this run, remove it."
            ) from e
        if not isinstance(document, dict):
            raise LedgerError(f"Privacy ledger {path} is not a JSON object.")
        return _from_document(document, run_id, node_key, source=str(path))


def restore_ledger(
    *,
    path: str | Path | None,
    state_record: ConfigRecord | None,
    run_id: str,
    node_key: str = "",
) -> PrivacyLedger:
    """Return the node's ledger from disk and/or ``context.state``, whichever knows more.

    A copy can lag behind the other (a crash between the two writes, or a
    state directory added mid-run); one whose rounds extend the other's is
    taken. Two copies that disagree on a shared round cannot both be right.

    Parameters
    ----------
    path : path, optional
        The ledger file (:func:`ledger_path`); None if the node keeps none.
    state_record : ConfigRecord, optional
        ``context.state[STATE_KEY]`` if present.
    run_id, node_key : str
        Expected owner, see :class:`PrivacyLedger`.

    Raises
    ------
    LedgerError
        If a copy is untrustworthy or the two copies conflict.
    """
    copies = []
    if path is not None:
        copies.append(PrivacyLedger.load(path, run_id, node_key=node_key))
    if state_record is not None:
        copies.append(
            PrivacyLedger.from_config_record(
                state_record, run_id=run_id, node_key=node_key
            )
        )
    if not copies:
        return PrivacyLedger(run_id=run_id, node_key=node_key)
    longest = max(copies, key=lambda ledger: len(ledger.history))
    for other in copies:
        if longest.history.releases[: len(other.history)] != other.history.releases:
            raise LedgerError(
                f"The privacy ledger on disk ({path}) and in context.state disagree "
                f"for run {run_id!r}; refusing to train rather than guess which "
                "spend is true."
            )
    return longest


def ledger_path(state_dir: str | Path, run_id: str | int) -> Path:
    """Where a node keeps its ledger for ``run_id`` inside ``state_dir``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", str(run_id))
    return Path(state_dir) / f"privacy-ledger-{safe}.json"


def _checksum(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _from_document(
    document: dict[str, Any], run_id: str, node_key: str, *, source: str
) -> PrivacyLedger:
    """Validate a saved ledger (file or ConfigRecord) and rebuild it."""
    refuse = "refusing to train rather than reset the ε count"
    version = document.get("format-version")
    if version != FORMAT_VERSION:
        raise LedgerError(
            f"Privacy ledger {source} has format version {version!r}, expected "
            f"{FORMAT_VERSION}; {refuse}. Was it written by another fedge version?"
        )
    payload = {k: v for k, v in document.items() if k != "sha256"}
    if document.get("sha256") != _checksum(payload):
        raise LedgerError(
            f"Privacy ledger {source} fails its checksum (edited or corrupted); "
            f"{refuse}."
        )
    if payload.get("run-id") != run_id:
        raise LedgerError(
            f"Privacy ledger {source} belongs to run {payload.get('run-id')!r}, "
            f"not run {run_id!r}; {refuse}."
        )
    if payload.get("node-key") != node_key:
        raise LedgerError(
            f"Privacy ledger {source} belongs to node {payload.get('node-key')!r}, "
            f"not {node_key!r}; {refuse}. Each node needs its own state directory."
        )
    try:
        # A saved ledger may hold a round released twice: no duplicate check.
        history = ReleaseHistory.from_columns(payload, LEDGER_COLUMNS, where=source)
    except (KeyError, TypeError, ValueError) as e:
        raise LedgerError(
            f"Privacy ledger {source} is malformed ({e}); {refuse}."
        ) from e
    return PrivacyLedger(run_id=run_id, node_key=node_key, history=history)

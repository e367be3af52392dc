"""The DP update a node released for its last round, kept to resend it unchanged.

A coordinator that loses a reply (killed before its checkpoint, then resumed)
asks the node for the same round again, with the same global parameters.
Training again would draw fresh noise: a second release, which the ledger must
count, so ε grows for an update nobody used. Instead the node keeps the update
it released (in its state folder, beside its ledger) and, asked again for the
same round with the same incoming parameters and the same settings, sends those
exact bytes again with no new ledger entry.

Why that costs no privacy budget: DP-SGD is a randomised mechanism ``M`` run on
the node's data. The first release is one draw ``u = M(D)``, and it is in the
ledger. Sending ``u`` again is a function of ``u`` alone (the identity), which
reads no data and draws no noise; by the post-processing property of
differential privacy, ``(u, u)`` is exactly as private as ``u``. That holds only
while the second reply is bit-identical to the first (same arrays, same
figures); any retraining is a new draw of ``M`` and is recorded as one. Whether
the cache is used depends only on what the coordinator sent and on the ledger,
never on the data. A different global model (the coordinator moved on, or
another resume point) gets a new, recorded release: the old update would be
the wrong answer to it.

The file holds one release (the last), written atomically; anything unreadable
is ignored with a warning, since retraining is always allowed (it only costs
budget). The node trusts its own state folder here as it does for the ledger.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedge.shared.atomic_io import atomic_write_bytes
from fedge.shared.config import RunConfig
from fedge.shared.privacy import HistoryEntry

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_META = "meta"  # the .npz member holding the JSON description
# The settings that decide what a round trains: data, model, DP-SGD, strategy.
# (The run section holds paths, timeouts and ``resume``, which a resume changes.)
_TRAINING_SECTIONS = ("data", "train", "dp", "strategy")

Figures = dict[str, float | int]


@dataclass(frozen=True)
class CachedRelease:
    """One released update and the reply figures sent with it.

    Attributes
    ----------
    server_round : int
        The round it answered.
    key : str
        :func:`release_key` of the incoming parameters and settings.
    ledger_length : int
        Ledger entries once this release was recorded (its entry the last).
    state_dict : dict of str to numpy.ndarray
        The trained weights sent, in the model's order.
    figures : dict
        The reply's metrics (ε, steps, ...).
    """

    server_round: int
    key: str
    ledger_length: int
    state_dict: dict[str, np.ndarray]
    figures: Figures

    def answers(self, server_round: int, key: str, ledger_rounds: list[int]) -> bool:
        """Whether this is the reply to ``server_round`` asked with ``key``.

        Also requires the ledger (its rounds, in order) to be where this
        release left it: the release is its last entry and nothing came since,
        so the figures (ε, steps) are still true.
        """
        return (
            self.server_round == server_round
            and self.key == key
            and len(ledger_rounds) == self.ledger_length
            and ledger_rounds[-1:] == [server_round]
        )

    def torch_state_dict(self) -> dict[str, torch.Tensor]:
        """Return the weights as tensors, to load into the model."""
        return {name: torch.from_numpy(a.copy()) for name, a in self.state_dict.items()}


def release_key(
    incoming: Mapping[str, torch.Tensor],
    *,
    config: RunConfig,
    model_spec: str | None,
    round_entry: HistoryEntry,
    num_examples: int,
) -> str:
    """SHA-256 of what decides a round's update: incoming weights and settings.

    Parameters
    ----------
    incoming : mapping of str to torch.Tensor
        The global model's state dict as received, before any training.
    config : RunConfig
        The run config; only its data, train, dp and strategy sections count.
    model_spec : str or None
        The model's JSON spec.
    round_entry : tuple
        The planned ``(σ, q, steps)`` of the round.
    num_examples : int
        The node's training examples.
    """
    settings = {
        section: dataclasses.asdict(getattr(config, section))
        for section in _TRAINING_SECTIONS
    }
    described = {
        "settings": settings,
        "model-spec": model_spec,
        "round-entry": list(round_entry),
        "num-examples": num_examples,
    }
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode("utf-8"))
    for name, tensor in incoming.items():
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"\0{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def release_path(state_folder: str | Path, run_id: str | int) -> Path:
    """Where a node keeps its last released update for ``run_id``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", str(run_id))
    return Path(state_folder) / f"released-update-{safe}.npz"


def save_release(path: str | Path, release: CachedRelease) -> None:
    """Write ``release`` to ``path`` atomically (replacing the previous round's)."""
    names = list(release.state_dict)
    meta = {
        "format-version": FORMAT_VERSION,
        "server-round": release.server_round,
        "key": release.key,
        "ledger-length": release.ledger_length,
        "names": names,
        "figures": release.figures,
    }
    buffer = io.BytesIO()
    # Arrays by position: parameter names need not be valid archive members.
    members: dict[str, Any] = {
        f"a{i}": release.state_dict[name] for i, name in enumerate(names)
    }
    members[_META] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    np.savez(buffer, **members)
    atomic_write_bytes(path, buffer.getvalue())


def load_release(path: str | Path) -> CachedRelease | None:
    """Read the release at ``path``; None if there is none or it cannot be read."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(stored[_META].tobytes().decode("utf-8"))
            if meta["format-version"] != FORMAT_VERSION:
                raise ValueError(f"format version {meta['format-version']!r}")
            state_dict = {name: stored[f"a{i}"] for i, name in enumerate(meta["names"])}
            return CachedRelease(
                server_round=int(meta["server-round"]),
                key=str(meta["key"]),
                ledger_length=int(meta["ledger-length"]),
                state_dict=state_dict,
                figures=dict(meta["figures"]),
            )
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile) as e:
        logger.warning(
            "the last released update %s cannot be read (%s): a round asked for "
            "again is trained again and recorded as one more release",
            path,
            e,
        )
        return None

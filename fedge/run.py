"""One run folder read as Python objects: :class:`Run`.

A simulated run and a deployed one leave the same folder (the run-folder
contract, :mod:`fedge.shared.run_folder`), so :class:`Run` reads either, while
the run is live or after it ended. Every property reads the files afresh: a
live run's ``metrics`` grows as rounds end.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedge.shared.errors import FedgeError
from fedge.shared.json_records import read_jsonl
from fedge.shared.run_folder import (
    CLIENT_EVALUATION,
    CLIENTS,
    CONFIG_FILE,
    METRIC_COLUMNS,
    METRICS_CSV_FILE,
    METRICS_JSONL_FILE,
    MODEL_CARD_JSON_FILE,
    ROUND,
    STATUS_FILE,
    load_flat_run_config,
    read_status,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from fedge.reports.run_progress import RunProgress

RunPath = str | os.PathLike[str]


class Run:
    """A run folder, simulated or deployed, running or finished.

    Parameters
    ----------
    path : path-like
        The run folder (``output-dir/run-name``), as ``fedge simulate`` or
        :func:`fedge.simulate` printed or returned it.

    Raises
    ------
    FedgeError
        ``path`` holds neither ``status.json`` nor ``config.json``.
    """

    def __init__(self, path: RunPath) -> None:
        self.path = Path(path).expanduser().absolute()
        if (
            not (self.path / STATUS_FILE).is_file()
            and not (self.path / CONFIG_FILE).is_file()
        ):
            raise FedgeError(
                f"{self.path} is not a fedge run folder: it has neither "
                f"{STATUS_FILE} nor {CONFIG_FILE}. Give the folder "
                "output-dir/run-name of a run."
            )

    def __repr__(self) -> str:
        """Name the folder and the run's state."""
        return f"Run({str(self.path)!r}, status={self.status!r})"

    def __fspath__(self) -> str:
        """Let a Run stand wherever a path to its folder is expected."""
        return str(self.path)

    @property
    def name(self) -> str:
        """The run's name: its folder's."""
        return self.path.name

    @property
    def status(self) -> str:
        """``running``, ``complete``, ``failed`` or ``unknown`` (no ``status.json``)."""
        return str(read_status(self.path).get("state"))

    @property
    def progress(self) -> RunProgress:
        """Where the run stands, as ``fedge status`` shows it.

        Rounds done, last accuracy, ε, mean round time, ETA while running,
        the resume command of a failed run, and whether a live run stalled
        (:class:`fedge.reports.run_progress.RunProgress`).
        """
        from fedge.reports.run_progress import read_progress

        return read_progress(self.path)

    @property
    def accuracy(self) -> float | None:
        """Central accuracy after the last round recorded (None before round 1)."""
        return self.progress.last_accuracy

    @property
    def config(self) -> dict[str, Any]:
        """The resolved run config (``config.json``): kebab-case key -> value."""
        return load_flat_run_config(self.path)

    @property
    def metrics(self) -> pd.DataFrame:
        """``metrics.csv``: one row per round (0: the initial model), same columns.

        Empty, with the declared columns, before the first round is recorded.
        """
        import pandas as pd

        path = self.path / METRICS_CSV_FILE
        try:
            return pd.read_csv(path)
        except (FileNotFoundError, pd.errors.EmptyDataError):
            return pd.DataFrame(columns=list(METRIC_COLUMNS))

    @property
    def clients(self) -> pd.DataFrame:
        """Each client's reply per round: one row per round and node.

        Columns: ``round`` and the reply's figures under their wire names
        (``node-id``, ``num-examples``, ``train-loss``, ``epsilon``, ...), as
        ``metrics.jsonl`` records them.
        """
        return self._per_client(CLIENTS)

    @property
    def client_evaluation(self) -> pd.DataFrame:
        """The global model evaluated on each node's own test split.

        One row per evaluated round and node (rounds due by
        ``evaluate-interval``, and the last); empty when no round evaluated.
        """
        return self._per_client(CLIENT_EVALUATION)

    @property
    def epsilon_per_node(self) -> dict[str, float]:
        """Each node's cumulative ε over the run, by node ID (as text).

        Empty without sample-level DP.
        """
        return self.progress.epsilon_per_node

    @property
    def model_card(self) -> dict[str, Any]:
        """``model_card.json``: what the model is, how well and how privately it does.

        Raises
        ------
        FedgeError
            The run has not written its model card (still running, failed, or
            made by a fedge without model cards: ``fedge export`` writes one).
        """
        path = self.path / MODEL_CARD_JSON_FILE
        if not path.is_file():
            raise FedgeError(
                f"{path} not found: the model card is written when a run "
                f"completes (this one is {self.status}) and by `fedge export`"
            )
        card: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return card

    def plots(self) -> dict[str, Figure]:
        """Return the report's plots of this run as matplotlib figures.

        Returns
        -------
        dict of str to matplotlib.figure.Figure
            By the file name ``plots/`` gives them (``accuracy.png``,
            ``loss.png``, ``epsilon.png``, ...), each only when the run has
            its values. No pyplot state is touched.
        """
        from fedge.reports.run_plots import plot_figures

        return plot_figures(self.metrics)

    @classmethod
    def compare(cls, runs: Sequence[Run | RunPath]) -> pd.DataFrame:
        """Return several runs side by side: one row per run and round.

        Parameters
        ----------
        runs : sequence of Run or path-like
            Two or more run folders.

        Returns
        -------
        pandas.DataFrame
            Columns ``run`` (the folder's name), ``round``,
            ``central-accuracy``, ``client-accuracy-worst`` and
            ``epsilon-max``, as ``fedge report RUN RUN ...`` tabulates them.

        Raises
        ------
        FedgeError
            Fewer than two runs, one twice, or one without a ``metrics.csv``.
        """
        from fedge.reports.run_comparison import compare_runs

        return compare_runs([Path(run) for run in runs])

    def _per_client(self, key: str) -> pd.DataFrame:
        """One row per round and per entry of the round's ``key`` list."""
        import pandas as pd

        rows = [
            {ROUND: record.get(ROUND), **entry}
            for record in read_jsonl(self.path / METRICS_JSONL_FILE)
            for entry in record.get(key) or []
            if isinstance(entry, dict)
        ]
        return pd.DataFrame(rows, columns=None if rows else [ROUND])

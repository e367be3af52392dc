"""A simulated run's end-of-run work, started the moment its run folder says complete.

The ServerApp's last act is writing ``status.json`` as ``complete``. After it,
Flower still ends the ClientApp actors (with a cluster of the run's own, the
whole Ray cluster), the ``flwr-simulation`` process reports back and ``flwr
run`` returns: seconds in which the run folder no longer changes. The report
(plots, ``report.md``) reads only the run folder, so :class:`RunEnd` writes it
during those seconds, in a thread, and runs the caller's ``on_complete`` (the
demo's result line, its export) first. A run that never completes gets its
report afterwards, from whatever rounds it recorded.

What reads only the recorded rounds (the report's plots) need not wait for
``complete`` either: once the final model is saved (``model.json``), no round is
added, and ``prepare`` runs in a thread of its own while the ServerApp writes
the model card and the export, so the report at ``complete`` is only its text.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from fedge.shared.run_folder import (
    COMPLETE,
    MODEL_INFO_FILE,
    STATUS_FILE,
    read_status,
)

POLL_S = 0.1


class RunEnd:
    """Watch ``run_dir`` while its run streams; finish its end-of-run work once.

    Parameters
    ----------
    run_dir : Path
        The run folder.
    write_report : callable
        ``write_report(run_dir)``: the report, written once per run.
    on_complete : callable or None, default None
        ``on_complete(run_dir)``, called once the run completed, before the
        report; not called for a run that fails.
    prepare : callable or None, default None
        ``prepare(run_dir)``, called in a thread of its own once this run saved
        its final model; the report waits for it. What it raises is left to
        the report, which then does the work itself.
    """

    def __init__(
        self,
        run_dir: Path,
        write_report: Callable[[Path], None],
        on_complete: Callable[[Path], None] | None = None,
        prepare: Callable[[Path], None] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self._write_report = write_report
        self._on_complete = on_complete
        self._prepare = prepare
        self._preparing: threading.Thread | None = None
        # A resumed run's folder holds the previous status and model: only new
        # ones count.
        self._before = self._status_stamp()
        self._model_before = _stamp(run_dir / MODEL_INFO_FILE)
        self._stop = threading.Event()
        self._done = threading.Event()
        # Set once a completed run's end-of-run work is done: nothing the run's
        # processes still do (Flower's shutdown) changes the run folder after it.
        self.finished_complete = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> RunEnd:
        """Start watching the run folder."""
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop watching; wait for work the watch already started."""
        self._stop.set()
        self._thread.join()

    def finish(self) -> None:
        """Do what the watch did not (the report of a run that did not complete).

        Call after the run's processes ended (and after :meth:`__exit__`).

        Raises
        ------
        BaseException
            Whatever ``on_complete`` or ``write_report`` raised in the watch.
        """
        if self._error is not None:
            raise self._error
        if not self._done.is_set():
            self._finish()

    def _watch(self) -> None:
        try:
            while not self._stop.wait(POLL_S):
                self._start_preparing()
                if self._completed():
                    self._finish()
                    return
        except BaseException as e:  # re-raised in the caller's thread by finish()
            self._error = e
            self._done.set()

    def _start_preparing(self) -> None:
        if self._prepare is None or self._preparing is not None:
            return
        stamp = _stamp(self.run_dir / MODEL_INFO_FILE)
        if stamp is not None and stamp != self._model_before:
            self._preparing = threading.Thread(
                target=self._prepare_quietly, daemon=True
            )
            self._preparing.start()

    def _prepare_quietly(self) -> None:
        assert self._prepare is not None
        try:
            self._prepare(self.run_dir)
        except Exception:  # the report does the work itself, and says what fails
            return

    def _finish(self) -> None:
        self._done.set()
        completed = self._completed()
        if self._on_complete is not None and completed:
            self._on_complete(self.run_dir)
        if self._preparing is not None:
            self._preparing.join()
        self._write_report(self.run_dir)
        if completed:
            self.finished_complete.set()

    def _completed(self) -> bool:
        stamp = self._status_stamp()
        return (
            stamp is not None
            and stamp != self._before
            and (read_status(self.run_dir).get("state") == COMPLETE)
        )

    def _status_stamp(self) -> tuple[int, int] | None:
        return _stamp(self.run_dir / STATUS_FILE)


def _stamp(path: Path) -> tuple[int, int] | None:
    """Return when ``path`` was last written and its size, or None if it is absent."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size

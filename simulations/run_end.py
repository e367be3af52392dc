"""A simulated run's end-of-run work, started the moment its run folder says complete.

The ServerApp's last act is writing ``status.json`` as ``complete``. After it,
Flower still ends the ClientApp actors (with a cluster of the run's own, the
whole Ray cluster), the ``flwr-simulation`` process reports back and ``flwr
run`` returns: seconds in which the run folder no longer changes. The report
(plots, ``report.md``) reads only the run folder, so :class:`RunEnd` writes it
during those seconds, in a thread, and runs the caller's ``on_complete`` (the
demo's result line, its export) first. A run that never completes gets its
report afterwards, from whatever rounds it recorded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from fedge.shared.run_folder import COMPLETE, STATUS_FILE, read_status

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
    """

    def __init__(
        self,
        run_dir: Path,
        write_report: Callable[[Path], None],
        on_complete: Callable[[Path], None] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self._write_report = write_report
        self._on_complete = on_complete
        # A resumed run's folder holds the previous status: only a new one counts.
        self._before = self._status_stamp()
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
                if self._completed():
                    self._finish()
                    return
        except BaseException as e:  # re-raised in the caller's thread by finish()
            self._error = e
            self._done.set()

    def _finish(self) -> None:
        self._done.set()
        completed = self._completed()
        if self._on_complete is not None and completed:
            self._on_complete(self.run_dir)
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
        try:
            stat = (self.run_dir / STATUS_FILE).stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_size

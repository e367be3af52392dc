"""How a run that cannot continue ends: one clear line, ``status.json``, a failed exit.

A run that cannot go on (too few nodes, a bad held-out file, a checkpoint it
cannot resume) raises a :class:`~fedge.shared.errors.FedgeError`. Letting that escape
the ServerApp makes Flower log a Python traceback and "An unhandled exception
occurred in the ServerApp" to the operator's terminal. Instead the ServerApp
logs one line saying what happened, where ``status.json`` is and how to resume,
and raises :class:`RunEnded`, Flower's own way for an app to exit with a code
(``flwr.app.exception.AppExitException``): the ``flwr-serverapp`` process exits
non-zero and Flower records the run as failed. A logging filter keeps Flower's
traceback and exit banner for that exception out of the log, since the line
before them already says everything.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app.exception import AppExitException
from flwr.common.logger import LOGGER_NAME
from flwr.supercore.exit.exit_code import ExitCode

from fedge.server.run_folder import resolve_run_dir
from fedge.shared.config import RunConfig
from fedge.shared.errors import FedgeError
from fedge.shared.run_folder import (
    CHECKPOINT_DIR,
    FAILED,
    RESUMABLE,
    STATUS_FILE,
    read_status,
    write_status,
)

logger = logging.getLogger(__name__)


class RunEnded(AppExitException):
    """The run could not continue; the log line before it and ``status.json`` say why."""

    exit_code = ExitCode.SERVERAPP_EXCEPTION


def end_failed_run(config: RunConfig | None, error: FedgeError) -> RunEnded:
    """Record and announce a run that cannot continue; the exception to raise.

    ``status.json`` is written unless the folder already has one: the run
    itself has then recorded its failure, or the folder belongs to an earlier
    run that must not be overwritten. A config too broken to name its folder
    (``config`` None) is only logged.
    """
    if config is None:
        line = f"run failed before it started: {error}"
    else:
        run_dir = resolve_run_dir(config)
        if not (run_dir / STATUS_FILE).is_file():
            run_dir.mkdir(parents=True, exist_ok=True)
            write_status(run_dir, FAILED, f"{type(error).__name__}: {error}")
        line = f"run failed: {error} (status: {run_dir / STATUS_FILE})"
        if _can_resume(run_dir):
            line += "; checkpoints are kept: submit it again with resume = true"
    logger.error("%s", line)
    return RunEnded(line)


def _can_resume(run_dir: Path) -> bool:
    status = read_status(run_dir)
    return (
        status.get("state") == FAILED
        and status.get(RESUMABLE, True) is not False
        and any((run_dir / CHECKPOINT_DIR).glob("round-*.pt"))
    )


class QuietRunEnded(logging.Filter):
    """Drop Flower's traceback and exit banner for a :class:`RunEnded`.

    Flower logs the exception with its traceback ("ServerApp raised an
    exception", or "Simulation raised an exception"), then an "Exit Code: N"
    banner calling it unhandled; fedge has already logged the reason, so both
    are noise to the operator.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ended = False

    def filter(self, record: logging.LogRecord) -> bool:
        """Return False for the records that only repeat a :class:`RunEnded`."""
        if record.exc_info and isinstance(record.exc_info[1], RunEnded):
            self.ended = True
            return False
        return not (self.ended and str(record.msg).startswith("Exit Code: "))


def quiet_flower_on_run_end() -> None:
    """Install :class:`QuietRunEnded` on Flower's logger, once per process."""
    flower = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(f, QuietRunEnded) for f in flower.filters):
        flower.addFilter(QuietRunEnded())

"""``flwr run --stream`` for a simulated run: its log to a file, the lines worth showing to the user.

:func:`stream_flwr_run` writes every line Flower streams to ``flower.log``,
echoes fedge's own progress and each distinct warning or error once
(:func:`line_to_show`), and can end the submission early once the run is over
(the run's processes are then ended by the caller).
"""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path
from typing import Any

from fedge.shared.errors import FedgeError
from fedge.shared.run_folder import RUN_COMPLETE_LOG

# Lines worth showing live: fedge's own progress, and Flower's warnings and errors.
_SHOW = re.compile(
    r"fedge:|ERROR|Error|Traceback|WARNING.*(fail|dropp|timeout)", re.IGNORECASE
)
# A simulated dropout is an exception in a virtual client: Flower logs it as a
# multi-line Ray traceback. Shown live, one short line per dropout is enough.
_DROPOUT = re.compile(r"simulated dropout: .*?\)")
_RAY_WRAPPER = re.compile(
    r"RayBackend|ray::ClientAppActor|RayTaskError|RaySystemError|"
    r"Traceback \(most recent|"
    r"^\s*raise \w+\($|Received error in reply from node|"
    r"FutureWarning|"
    # Ray's own processes, relayed to the driver: nothing reads Ray's metrics.
    r"metrics exporter agent"
)
# Ray prefixes what an actor prints with its pid: the same error from two
# virtual clients differs only there.
_ACTOR_PREFIX = re.compile(r"^\(\w+ pid=\d+\)\s*")
# Flower relays the ServerApp's log in batches (uploaded every 0.2 s, streamed
# every 0.5 s): a run's processes are ended only once its last line, logged
# just before status.json says complete, came through, or after this long.
LAST_LINE_WAIT_S = 2.0


def stream_flwr_run(
    command: list[str],
    env: dict[str, str],
    log_path: Path,
    *,
    cwd: Path,
    verbose: bool,
    echo: Any,
    stop_when: threading.Event | None = None,
) -> None:
    """Run ``flwr run``, echoing its lines; end it early once ``stop_when`` is set.

    Raises
    ------
    FedgeError
        ``flwr run`` exited non-zero by itself.
    """
    with (
        log_path.open("w") as log,
        subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as process,
    ):
        assert process.stdout is not None
        last_line = threading.Event()
        if stop_when is not None:
            _end_when_set(process, stop_when, last_line)
        seen: set[str] = set()
        try:
            for line in process.stdout:
                log.write(line)
                clean = re.sub(r"\x1b\[[0-9;]*m", "", line).rstrip()
                if RUN_COMPLETE_LOG in clean:
                    last_line.set()
                shown = clean if verbose else line_to_show(clean, seen)
                if shown is not None:
                    echo(shown)
        except BaseException:
            # Interrupted (or the caller's echo raised): end the submission
            # now, not when the run would have ended by itself.
            process.kill()
            raise
    if process.returncode != 0 and not (stop_when is not None and stop_when.is_set()):
        raise FedgeError(
            f"`flwr run` exited with code {process.returncode}; see {log_path}"
        )


def _end_when_set(
    process: subprocess.Popen[str],
    stop_when: threading.Event,
    last_line: threading.Event,
) -> None:
    """End ``process`` once ``stop_when`` is set and ``last_line`` came (a thread)."""

    def wait_then_end() -> None:
        while process.poll() is None:
            if stop_when.wait(0.1):
                last_line.wait(LAST_LINE_WAIT_S)
                process.terminate()
                return

    threading.Thread(target=wait_then_end, daemon=True).start()


def line_to_show(line: str, seen: set[str]) -> str | None:
    """Return what to echo of one Flower log line when not verbose, or None.

    fedge's own lines are always shown. Any other line is shown the first time
    only: a node error repeats once per node and round, and the coordinator's
    round line already says when every node failed alike (the whole log is in
    ``flower.log``).
    """
    dropout = _DROPOUT.search(line)
    if dropout:
        shown = f"fedge simulate: {dropout.group(0)}"
    elif "fedge:" in line:
        return line
    elif _RAY_WRAPPER.search(line) or not _SHOW.search(line):
        return None  # a wrapped error's own line follows and is shown
    else:
        shown = _ACTOR_PREFIX.sub("", line)
    if shown in seen:
        return None
    seen.add(shown)
    return shown

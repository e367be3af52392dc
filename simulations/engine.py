"""A simulation engine: one SuperLink and one Ray head that runs are submitted to.

``simulate()`` given no engine starts one for its run alone, in the
background, as soon as it is called (its SuperLink and lean Ray head start
while the data is checked), and closes it when the run ends; once the run
folder says complete and is reported on, the whole engine is ended at once,
Flower's shutdown of the run not waited for. A :class:`SimulationEngine` kept
warm is one that several runs share: runs submitted through it
(``simulate(..., engine=...)``, or any ``simulate`` inside :func:`sharing`)
skip the starts and the teardown. Study cells, notebooks and tests reuse one.

The engine's processes keep the environment they started with; a run started
when this process's environment differs (a ``PYTHONPATH`` set since, say)
restarts them first. Nothing is shared between runs but the processes: each run is a ``flwr run``
of its own (its own run ID, its own ``flwr-simulation`` process, ServerApp and
ClientApp actors, a Ray job of its own whose actors end with it), its own run
folder and run config. Runs through one engine go one at a time (a lock), so no
two runs' actors compete for the cluster's CPUs.

The engine never outlives its owner. :meth:`SimulationEngine.close` (or the end
of its ``with`` block) stops it; so does the interpreter's exit (``atexit``);
and a watcher process (:mod:`fedge.simulations.engine_watch`), holding a pipe whose
other end only the owner holds, stops it when the owner dies any other way,
``SIGKILL`` included. A run interrupted or failing in the middle of its
``flwr run`` stops the engine (the next run starts a fresh one) rather than
leave a run of unknown state on it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from fedge.simulations.flower_processes import (
    SuperLink,
    end_processes,
    free_port,
    process_tree,
    serving_superlink,
    start_logged,
    stop_process,
    superlink_command,
)
from fedge.simulations.ray_head import ENGINE_ENV, RAY_ADDRESS_ENV, ray_head_command


class SimulationEngine:
    """A SuperLink in simulation mode and a Ray head, started on first use.

    Parameters
    ----------
    num_cpus : int or None, default None
        CPUs the Ray head offers the virtual clients; None = every core, as
        the engine's own cluster would.

    Examples
    --------
    ``with SimulationEngine() as engine:`` then ``simulate(..., engine=engine)``
    as often as needed; everything stops at the end of the block.
    """

    def __init__(self, *, num_cpus: int | None = None) -> None:
        self.num_cpus = num_cpus or os.cpu_count() or 1
        self._lock = threading.RLock()
        self._stack: contextlib.ExitStack | None = None
        self._link: SuperLink | None = None
        self._pids: list[int] = []
        self._watcher: subprocess.Popen[bytes] | None = None
        self._environ: dict[str, str] = {}
        self._closed = False
        self._starting: threading.Thread | None = None
        self.starts = 0  # how many times the processes were started

    def __enter__(self) -> SimulationEngine:
        """Return the engine; it starts on its first run."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the engine (:meth:`close`)."""
        self.close()

    @property
    def pids(self) -> list[int]:
        """Process IDs of the engine's session leaders (empty while stopped)."""
        return list(self._pids)

    def start_in_background(self) -> None:
        """Start the engine's processes now, in a thread; return at once.

        For a caller with work of its own before its first run (reading and
        checking data, importing torch): the SuperLink and the Ray head start
        meanwhile. :meth:`run_slot` waits for the start to end; a start that
        failed is tried again there, and its error raised from there.
        """
        thread = threading.Thread(target=self._start_quietly, daemon=True)
        self._starting = thread
        thread.start()

    def _start_quietly(self) -> None:
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(Exception):  # run_slot starts again, and says why
                self._start()

    @contextlib.contextmanager
    def run_slot(self) -> Iterator[SuperLink]:
        """Hold the engine for one run; yield the SuperLink to submit it to.

        Starts the engine if it is stopped. A run that raises out of this block
        (interrupted, or its ``flwr run`` failed) stops the engine: whatever it
        left on the SuperLink or the cluster ends with it, and the next run
        starts afresh.

        Raises
        ------
        RuntimeError
            The engine was closed, or its SuperLink did not start.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError(
                    "this SimulationEngine is closed; create a new one to run more "
                    "simulations"
                )
            link = self._start()
            try:
                yield link
            except BaseException:
                self._stop()
                raise

    def close(self) -> None:
        """Stop every process the engine started; it takes no more runs."""
        self._closed = True
        with self._lock:  # after a start in the background, not during it
            self._stop()

    def _start(self) -> SuperLink:
        alive = self._link is not None and self._link.process.poll() is None
        if alive and self._environ == _process_environ():
            assert self._link is not None
            return self._link
        # A SuperLink that died: clear what is left of the engine. An
        # environment changed since the start (a PYTHONPATH set, say): the
        # processes keep the one they started with, so start them anew.
        self._stop()
        self._environ = _process_environ()
        stack = contextlib.ExitStack()
        try:
            workdir = Path(stack.enter_context(_short_temp_dir("fedge-eng-")))
            # Ray's socket paths live under its temp dir: keep it short.
            ray_dir = Path(stack.enter_context(_short_temp_dir("fedge-rh-")))
            command, ray_address = ray_head_command(ray_dir, num_cpus=self.num_cpus)
            # The head starts while the SuperLink does; the first run's
            # ``ray.init`` waits for it to be up.
            head = start_logged(
                command,
                env={**os.environ, **ENGINE_ENV},
                log_path=workdir / "ray-head.log",
            )
            stack.callback(stop_process, head)
            port = free_port()
            link = stack.enter_context(
                serving_superlink(
                    superlink_command(port, simulation=True),
                    workdir=workdir,
                    port=port,
                    env={**ENGINE_ENV, RAY_ADDRESS_ENV: ray_address},
                )
            )
            pids = [head.pid, link.process.pid]
            watcher = _start_watcher(pids)
        except BaseException:
            stack.close()
            raise
        self._stack, self._link, self._pids = stack, link, pids
        self._watcher = watcher
        self.starts += 1
        atexit.register(self._stop)
        return link

    def _stop(self) -> None:
        stack, leaders = self._stack, self._pids
        self._stack, self._link, self._pids = None, None, []
        if stack is not None:
            atexit.unregister(self._stop)
            # Taken while the leaders live: the SuperExec and the simulation
            # process run in sessions of their own below the SuperLink.
            # All at once: one by one, each waits out the last one's shutdown.
            # Briefly: the GCS and raylet take 1-2 s to end on SIGTERM, and
            # nothing the engine holds outlives it (its temp dirs go below).
            end_processes(process_tree(leaders), grace_s=0.3)
            stack.close()  # what is left: temp dirs, the leaders' reaping
        if self._watcher is not None:  # last: what it watches is gone
            _close_watcher(self._watcher)
            self._watcher = None


_shared: SimulationEngine | None = None

# Set by pytest to the running test's name, so it differs for every test; the
# engine's processes do not depend on it.
_VOLATILE_ENV = frozenset({"PYTEST_CURRENT_TEST"})


def _process_environ() -> dict[str, str]:
    """Return the environment the engine's processes depend on (all but volatile names)."""
    return {k: v for k, v in os.environ.items() if k not in _VOLATILE_ENV}


@contextlib.contextmanager
def sharing(engine: SimulationEngine | None) -> Iterator[SimulationEngine | None]:
    """Make every ``simulate`` in this block without an engine of its own use ``engine``.

    For callers that reach ``simulate`` through code they do not change (the
    ``fedge simulate`` command line, studies, tests). A run given a
    ``ray_address`` still starts an engine of its own on that cluster. None:
    no shared engine in this block (each run starts its own).
    """
    global _shared
    previous, _shared = _shared, engine
    try:
        yield engine
    finally:
        _shared = previous


def shared_engine() -> SimulationEngine | None:
    """Return the engine :func:`sharing` set, or None."""
    return _shared


@contextlib.contextmanager
def _short_temp_dir(prefix: str) -> Iterator[str]:
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _start_watcher(leaders: list[int]) -> subprocess.Popen[bytes]:
    """Start a watcher that ends these processes' trees if this process dies first.

    The watcher reads a pipe only this process writes to: the kernel closes
    it when this process ends, however it ends, and the watcher then stops
    every process left of the trees. A normal stop closes the pipe once the
    trees are already gone (:func:`_close_watcher`).
    """
    return subprocess.Popen(
        [sys.executable, "-m", "fedge.simulations.engine_watch", *map(str, leaders)],
        stdin=subprocess.PIPE,
        start_new_session=True,  # a Ctrl-C to the owner's group must not end it
    )


def _close_watcher(watcher: subprocess.Popen[bytes]) -> None:
    assert watcher.stdin is not None
    watcher.stdin.close()
    try:
        # Its sweep finds nothing left (the trees were ended first), unless a
        # process will not die (one held by a debugger); then it is not
        # worth the owner's wait, nor a failed run.
        watcher.wait(timeout=5)
    except subprocess.TimeoutExpired:
        watcher.kill()
        watcher.wait()

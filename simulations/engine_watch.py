"""Stop a warm engine's processes when the process that owns the engine dies.

Run as ``python -m simulations.engine_watch SESSION_ID...`` with standard input
a pipe from the owner (:func:`fedge.simulations.engine._start_watcher`). It blocks until
the pipe closes (the owner closed it or died, the kernel closing it either way),
then ends every process still in the given sessions or below their leaders
(:func:`fedge.simulations.flower_processes.process_tree`): SIGTERM, a grace period,
SIGKILL.
"""

from __future__ import annotations

import signal
import sys
import time

from fedge.simulations.flower_processes import end_processes, process_tree

GIVE_UP_S = 30.0


def main(leaders: list[int]) -> None:
    """Wait for standard input to close, then end the processes of ``leaders``.

    Again and again until none is left: a Ray head still starting when its
    owner died starts processes after the first sweep, and a process whose
    parent the sweep ended is found through the sessions of those it ended.
    """
    while sys.stdin.buffer.read(4096):
        pass
    known = set(leaders)
    deadline = time.monotonic() + GIVE_UP_S
    while (tree := process_tree(sorted(known))) and time.monotonic() < deadline:
        known.update(tree)
        end_processes(tree)


if __name__ == "__main__":
    # Ctrl-C reaches the owner's process group, not this session; ignore it anyway.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    main([int(arg) for arg in sys.argv[1:]])

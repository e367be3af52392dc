"""Stop a warm engine's processes when the process that owns the engine dies.

Run as ``python -m simulations.engine_watch SESSION_ID...`` with standard input
a pipe from the owner (:func:`simulations.engine._watched`). It blocks until
the pipe closes (the owner closed it or died, the kernel closing it either way),
then ends every process still in the given sessions: SIGTERM, a grace period,
SIGKILL.
"""

from __future__ import annotations

import signal
import sys
import time

from simulations.flower_processes import session_members, signal_session

GRACE_S = 5.0


def main(session_ids: list[int]) -> None:
    """Wait for standard input to close, then empty ``session_ids``."""
    while sys.stdin.buffer.read(4096):
        pass
    for session in session_ids:
        signal_session(session, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while any(session_members(s) for s in session_ids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for session in session_ids:
        signal_session(session, signal.SIGKILL)


if __name__ == "__main__":
    # Ctrl-C reaches the owner's process group, not this session; ignore it anyway.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    main([int(arg) for arg in sys.argv[1:]])
